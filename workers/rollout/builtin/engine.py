"""BuiltinRolloutEngine: the torch rollout engine that runs everywhere (CPU, CUDA, any torch device).

The core is tensor-in / tensor-out (`generate_tensors`); `generate` is a thin adapter to
the Batch protocol. Memory follows the hybrid-engine state machine: `sleep` drops the
KV cache and parks weights on CPU, `wake_up` brings both back, both idempotent.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import torch

from workers.batch import Batch
from workers.dtypes import to_dtype
from workers.rollout.layout import rollout_output
from workers.rollout.base import SamplingParams
from workers.rollout.builtin.continuous import ContinuousBatcher
from workers.rollout.builtin.cpu_kernels import SLOT_BLOCK, FusedCpuDecoder
from workers.rollout.builtin.decode_loop import GroupResult, LoopConfig, run_group
from workers.rollout.builtin.kv_cache import KVCache
from workers.rollout.builtin.partial import run_group_with_updates
from workers.rollout.builtin.model import CompactDecoder
from workers.rollout.builtin.sampling import SamplerConfig
from workers.rollout.builtin.spec import spec_from_hf_config
from workers.rollout.builtin.stats import rollout_stats
from workers.rollout.builtin.weights import WeightLoader
from workers.rollout.streaming import FinishedGroup, GroupRequest
from workers.rollout.weight_updates import WeightUpdates


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    return dtype if isinstance(dtype, torch.dtype) else to_dtype(dtype)


class BuiltinRolloutEngine:
    """Batched, KV-cached sampling from a compact Llama/Qwen2 decoder; returns token log-probs."""

    def __init__(
        self,
        model_config: Any,
        *,
        dtype: torch.dtype | str,
        device: torch.device | str,
        max_batch_size: int,
        max_seq_len: int,
        pad_token_id: int,
        compact_fraction: float = 0.125,
        sync_every: int | None = None,
        kernels: str = "torch",
        sleep_level: int = 1,
    ) -> None:
        """model_config: a transformers config (Llama/Qwen2) or its config.json dict.

        max_batch_size bounds rows decoded at once (prompts x n; larger calls run in groups);
        max_seq_len bounds prompt + new tokens and sizes the KV cache.
        compact_fraction: drop finished rows once they are this fraction of the active rows.
        sync_every: steps between host syncs that check for finished rows (default 1 on CPU, 8 elsewhere).
        kernels: "torch" (the forward as torch ops, any device) or "cpp" (CPU only: prefill and decode
            steps as one C++ call each, cpu_kernels/, compiled on first use and cached).
        sleep_level: what `sleep` does with the weights: 0 keep, 1 park on the host, 2 discard.
        """
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"builtin rollout: sleep_level must be 0, 1 or 2, got {sleep_level}")
        self.sleep_level = sleep_level
        self._shapes: dict[str, torch.Size] = {}
        self.spec = spec_from_hf_config(model_config)
        self.dtype = _as_dtype(dtype)
        self.device = torch.device(device)
        self.max_batch_size = int(max_batch_size)
        self.max_seq_len = int(max_seq_len)
        self.pad_token_id = int(pad_token_id)
        self.compact_fraction = float(compact_fraction)
        self.sync_every = int(sync_every or (1 if self.device.type == "cpu" else 8))
        if kernels not in ("torch", "cpp"):
            raise ValueError(f"builtin rollout: kernels={kernels!r} must be 'torch' or 'cpp'")
        self.model = CompactDecoder(self.spec, dtype=self.dtype, device=self.device, max_positions=self.max_seq_len)
        self.loader = WeightLoader(self.model)
        fused = kernels == "cpp"
        self.cache = KVCache(
            num_layers=self.spec.num_layers,
            max_batch=self.max_batch_size,
            kv_heads=self.spec.num_kv_heads,
            max_len=-(-self.max_seq_len // SLOT_BLOCK) * SLOT_BLOCK if fused else self.max_seq_len,
            head_dim=self.spec.head_dim,
            dtype=self.dtype,
            device=self.device,
            kernel_layout=fused,
        )
        self._step: CompactDecoder | FusedCpuDecoder = (
            FusedCpuDecoder(self.model, self.max_batch_size) if kernels == "cpp" else self.model
        )
        self._weights_on_device = True
        self._stream: ContinuousBatcher | None = None
        self.last_step_rows: list[int] = []  # rows fed to each decode step of the last call (all groups)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "BuiltinRolloutEngine":
        """Build from a local HF directory (config.json + *.safetensors); every weight must be present."""
        from safetensors import safe_open
        from transformers import AutoConfig

        path = Path(path)
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        if "pad_token_id" not in kwargs:
            pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
            kwargs["pad_token_id"] = pad[0] if isinstance(pad, (list, tuple)) else (pad or 0)
        engine = cls(config, **kwargs)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"builtin rollout: no *.safetensors in {path}")
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                engine.load_weights((name, f.get_tensor(name)) for name in f.keys())
        missing = engine.loader.missing()
        if missing:
            raise KeyError(f"builtin rollout: checkpoint {path} lacks weights: {missing}")
        return engine

    # -- weights and memory -------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named weights in place (any subset per call); unknown names raise KeyError naming them."""
        self.loader.load(weights)
        if isinstance(self._step, FusedCpuDecoder):
            self._step.invalidate()

    def hf_weight(self, name: str) -> torch.Tensor:
        """What the engine holds for an HF weight name: lets the hybrid engine diff it against the trainer."""
        return self.loader.read(name)

    @property
    def forward_path(self) -> str:
        """Which forward decodes: "torch", "cpp" or "cpp, AVX512-BF16 attention" (benchmarks print it)."""
        if not isinstance(self._step, FusedCpuDecoder):
            return "torch"
        return "cpp, AVX512-BF16 attention" if self._step.paired_bf16 else "cpp"

    @property
    def asleep(self) -> bool:
        """True when the KV cache is freed or the weights are parked off-device."""
        return not (self.cache.allocated and self._weights_on_device)

    def sleep(self) -> None:
        """Free the KV cache; then, by `sleep_level`, keep the weights (0), park them on the host (1; they stay
        put on a CPU device) or discard them (2: the next weight sync rewrites every one, so copying them out
        and back would be wasted; generation is refused until it has). Idempotent."""
        self.cache.free()
        if isinstance(self._step, FusedCpuDecoder):
            self._step.invalidate()  # drop the packed copies of the projections
        if not self._weights_on_device or self.sleep_level == 0:
            return
        if self.sleep_level == 2:
            self._shapes = {name: p.shape for name, p in self.model.named_parameters()}
            for p in self.model.parameters():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            self.loader.loaded.clear()  # every weight must come back before generating
        elif self.device.type != "cpu":
            self.model.to("cpu")
        else:
            return
        self._weights_on_device = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def wake_up(self, tags: Iterable[str] = ("weights", "kv_cache")) -> None:
        """Bring weights back to the device (uninitialised after a level-2 sleep, for the sync to fill) and/or
        allocate the KV cache (tags as in vLLM). Idempotent."""
        tags = set(tags)
        if "weights" in tags and not self._weights_on_device:
            if self.sleep_level == 2:
                for name, p in self.model.named_parameters():
                    p.data = torch.empty(self._shapes[name], dtype=p.dtype, device=self.device)
            else:
                self.model.to(self.device)
            self._weights_on_device = True
        if "kv_cache" in tags:
            self.cache.allocate()

    # -- generation ---------------------------------------------------------------------

    def _loop_config(self, params: SamplingParams, prompt_width: int) -> LoopConfig:
        if params.n < 1 or params.n > self.max_batch_size:
            raise ValueError(f"builtin rollout: n={params.n} must be in [1, max_batch_size={self.max_batch_size}]")
        if params.max_new_tokens < 1:
            raise ValueError(f"builtin rollout: max_new_tokens={params.max_new_tokens} must be >= 1")
        if prompt_width + params.max_new_tokens > self.max_seq_len:
            raise ValueError(
                f"builtin rollout: prompt width {prompt_width} + max_new_tokens {params.max_new_tokens} "
                f"exceeds max_seq_len={self.max_seq_len}"
            )
        return LoopConfig(
            sampler=SamplerConfig(temperature=float(params.temperature), top_k=int(params.top_k), top_p=float(params.top_p)),
            n=int(params.n),
            max_new_tokens=int(params.max_new_tokens),
            stop_token_ids=tuple(int(t) for t in params.stop_token_ids),
            repetition_stop_window=int(params.repetition_stop_window),
            repetition_stop_prob=float(params.repetition_stop_prob),
            pad_token_id=self.pad_token_id,
            compact_fraction=self.compact_fraction,
            sync_every=self.sync_every,
        )

    def _prepare(self) -> None:
        missing = self.loader.missing()
        if missing:
            raise RuntimeError(f"builtin rollout: weights never loaded: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        self.wake_up()

    supports_updates_mid_generation = True  # takes new weights between decode steps (workers/rollout/weight_updates.py)

    @torch.inference_mode()
    def generate_tensors(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams,
        updates: WeightUpdates | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Left-padded prompts [B, P] -> (output tensors of the RolloutEngine contract on CPU, rollout stats).

        updates: weights may change between decode steps (trainer.mode=async, builtin/partial.py); the output
        then also holds token_versions [B*n, R], the policy version that sampled each token (-1 on padding).
        """
        start = time.perf_counter()
        self._prepare()
        cfg = self._loop_config(params, input_ids.shape[1])
        generator = torch.Generator(device=self.device).manual_seed(int(params.seed))
        ids = input_ids.to(self.device)
        mask = attention_mask.to(self.device)
        per_group = max(1, self.max_batch_size // cfg.n)
        results: list[GroupResult] = []
        versions: list[torch.Tensor] = []
        interrupted = 0
        for lo in range(0, ids.shape[0], per_group):
            group = (ids[lo : lo + per_group], mask[lo : lo + per_group])
            if updates is None:
                results.append(run_group(self._step, self.cache, *group, cfg, generator))
                continue
            res, ver, cut = run_group_with_updates(self._step, self.cache, *group, cfg, generator, updates)
            results.append(res)
            versions.append(ver)
            interrupted += cut
        self.last_step_rows = [rows for res in results for rows in res.step_rows]
        responses = torch.cat([res.tokens for res in results]).cpu()
        log_probs = torch.cat([res.log_probs for res in results]).cpu()
        lengths = torch.cat([res.lengths for res in results]).cpu()
        seconds = time.perf_counter() - start
        out = rollout_output(input_ids, attention_mask, responses, log_probs, lengths, cfg.n)
        stats = rollout_stats(results, lengths, seconds)
        if updates is not None:
            out["token_versions"] = torch.cat(versions).cpu()
            stats["partial_interrupted"] = float(interrupted)
        return out, stats

    def generate(self, batch: Batch, params: SamplingParams, updates: WeightUpdates | None = None) -> Batch:
        """Batch adapter: reads input_ids/attention_mask; every other field is carried, repeated n times interleaved."""
        tensors, stats = self.generate_tensors(batch["input_ids"], batch["attention_mask"], params, updates)
        out = batch.repeat(params.n, interleave=True)
        for key, value in tensors.items():
            out[key] = value
        out.meta["rollout_stats"] = stats
        return out

    # -- request-level generation (workers/rollout/streaming.py) -----------------------------------

    @property
    def supports_streaming(self) -> bool:
        """Continuous batching needs per-row cache slots, which only the torch forward has."""
        return not isinstance(self._step, FusedCpuDecoder)

    @torch.inference_mode()  # the cache may hold inference tensors (allocated by a generate call)
    def start_stream(self, params: SamplingParams, updates: WeightUpdates | None = None) -> None:
        if not self.supports_streaming:
            raise ValueError("builtin rollout: request-level generation (rollout.stream) needs rollout.kernels=torch")
        self._prepare()
        self.cache.zero_()
        cfg = self._loop_config(params, 1)
        generator = torch.Generator(device=self.device).manual_seed(int(params.seed))
        self._stream = ContinuousBatcher(self.model, self.cache, cfg, generator, updates)

    def _streaming(self) -> ContinuousBatcher:
        if self._stream is None:
            raise RuntimeError("builtin rollout: start_stream() first")
        return self._stream

    def add(self, requests: list[GroupRequest]) -> None:
        self._streaming().add(requests)

    def step(self) -> list[FinishedGroup]:
        return self._streaming().step()

    def pending(self) -> int:
        return self._stream.pending() if self._stream is not None else 0

    def end_stream(self) -> list[str]:
        dropped = self._stream.end_stream() if self._stream is not None else []
        self._stream = None
        return dropped
