"""The one GPU check: the engines driven directly in one process (world size 1), one table of figures.

Run by scripts/gpu_check.sh on a GPU machine (NCCL; no Ray, no vLLM needed) in a few minutes, or with
--dry-run anywhere (CPU, gloo, tiny shapes: the same code paths, no figures worth quoting; the suite
runs it so the script cannot rot). Checks:

1. fsdp2_step: one FSDP2 bf16 train step (fp32 master weights) on a random Qwen2.5-0.5B-shaped model
   with its 151,936-token vocabulary: tokens/s and MFU against 790 TFLOP/s bf16 (6 x params x tokens,
   plus attention).
2. offload: the hybrid engine's offload of params + optimizer state frees >= 90 % of the device memory
   they held, and reloads them bit-exact.
3. weight_stream: FSDP2 -> built-in rollout engine weight sync, GB/s.
4. decode: built-in engine decode tokens/s at batch 256 against the HBM roofline (every decode step
   reads all weights once: bandwidth / weight bytes steps per second).
5. chunked_logprobs: peak memory of chunked vs one-piece log-probs + entropy on [8, 1024, vocab] logits,
   and their difference.
6. varlen: compacted rows (SDPA) vs varlen packing (workers/engines/varlen.py) on rows of random lengths:
   log-probs agree, the flash varlen kernel ran, and the train step's time ratio.
7. megatron_bf16: a Megatron-core bf16 forward/backward/step on one GPU (tensor and pipeline parallel 1).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

PEAK_BF16_FLOPS = 790e12  # H200 dense bf16, measured (shared notes)
HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e, spec sheet

QWEN05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


@dataclass
class Row:
    check: str
    figure: str
    target: str
    ok: bool | None  # None: measured, no pass/fail


@dataclass(frozen=True)
class Setup:
    device: torch.device
    model_dir: Path
    rows: int
    seq: int
    decode_batch: int
    decode_tokens: int
    dry_run: bool

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.device.type == "cuda" else 0


def _model_dir(shape: dict, root: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**shape)).save_pretrained(root / "model")
    return root / "model"


def _batch(setup: Setup, vocab: int):
    from workers.batch import Batch

    g = torch.Generator().manual_seed(1)
    prompt, response = setup.seq // 2, setup.seq - setup.seq // 2
    ids = torch.randint(3, vocab, (setup.rows, setup.seq), generator=g)
    mask = torch.ones_like(ids)
    return Batch.from_dict({"input_ids": ids, "attention_mask": mask, "position_ids": torch.arange(setup.seq).expand_as(ids),
                            "responses": ids[:, prompt:].clone(), "response_mask": torch.ones(setup.rows, response)})


def _fsdp(setup: Setup, trainable: bool = True, attention: str = "sdpa"):
    from workers.engines.fsdp2 import FSDPEngine
    from workers.engines.fsdp2.spec import FSDPEngineSpec, OptimSpec

    compute = "float32" if setup.dry_run else "bfloat16"
    spec = FSDPEngineSpec(model_path=str(setup.model_dir), model_kind="causal_lm", master_dtype="float32",
                          param_dtype=compute, reduce_dtype="float32", reshard_after_forward=True,
                          activation_checkpointing=True, cpu_offload=False, attn_implementation=attention, remove_padding=True,
                          max_tokens_per_micro_batch=None, gather_once=True, seed=0)
    optim = OptimSpec(lr=1e-5, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, grad_clip=1.0, warmup_steps=0,
                      total_steps=10, schedule="constant", min_lr_ratio=1.0) if trainable else None
    return FSDPEngine(spec, optim, device=setup.device)


def check_fsdp2_step(setup: Setup, state: dict) -> list[Row]:
    from workers.losses.sft import sft_loss

    engine = state["engine"] = _fsdp(setup)
    batch = _batch(setup, engine.hf_config.vocab_size)
    engine.train_mini_batch(batch, sft_loss, micro_batch_size=setup.rows, temperature=1.0, with_entropy=False)  # warm
    setup.sync()
    start = time.perf_counter()
    metrics = engine.train_mini_batch(batch, sft_loss, micro_batch_size=setup.rows, temperature=1.0, with_entropy=False)
    setup.sync()
    seconds = time.perf_counter() - start
    c = engine.hf_config
    params = sum(p.numel() for p in engine.module.parameters())
    tokens = setup.rows * setup.seq
    attention = 12 * c.num_hidden_layers * c.hidden_size * setup.seq * tokens / 2  # causal: half the score matrix
    flops = 6 * params * tokens + attention
    mfu = flops / seconds / PEAK_BF16_FLOPS
    finite = math.isfinite(metrics["grad_norm"]) and metrics["step_skipped"] == 0.0
    return [Row("fsdp2_step", f"{tokens / seconds:,.0f} tok/s, {seconds:.3f} s, MFU {mfu:.1%} ({params / 1e6:.0f}M params)",
                "finite step; MFU reported", finite)]


def check_offload(setup: Setup, state: dict) -> list[Row]:
    from hybrid_engine.offload import TrainingStateOffloader

    engine = state["engine"]
    before = [t.detach().clone() for t in engine.module.parameters()]
    held = setup.allocated()
    offloader = TrainingStateOffloader(engine.module, engine.optimizer, device=setup.device,
                                       release_storage=True, pin_memory=setup.device.type == "cuda")
    moved = offloader.offload_optimizer().bytes_moved + offloader.offload_params().bytes_moved
    setup.sync()
    freed = (held - setup.allocated()) / max(held, 1) if setup.device.type == "cuda" else None
    offloader.reload_params()
    offloader.reload_optimizer()
    exact = all(torch.equal(a, b) for a, b in zip(before, [t.detach() for t in engine.module.parameters()]))
    figure = f"{moved / 2**30:.2f} GiB moved" + (f", {freed:.0%} of device memory freed" if freed is not None else "")
    return [Row("offload", figure + ("; reload bit-exact" if exact else "; reload DIFFERS"), ">= 90 % freed, bit-exact",
                exact and (freed is None or freed >= 0.9))]


def _rollout(setup: Setup, batch_size: int):
    from workers.rollout.builtin.engine import BuiltinRolloutEngine

    return BuiltinRolloutEngine.from_pretrained(setup.model_dir, dtype="float32" if setup.dry_run else "bfloat16",
                                                device=setup.device, max_batch_size=batch_size,
                                                max_seq_len=16 + setup.decode_tokens, pad_token_id=0)


def check_weight_stream(setup: Setup, state: dict) -> list[Row]:
    engine, rollout = state["engine"], state.setdefault("rollout", _rollout(setup, setup.decode_batch))
    dtype = torch.float32 if setup.dry_run else torch.bfloat16
    stream = engine.export_weights(dtype=dtype, bucket_bytes=1 << 28, consumer=True)
    setup.sync()
    start = time.perf_counter()
    for bucket in stream:
        rollout.load_weights(bucket)
    setup.sync()
    seconds = time.perf_counter() - start
    gb = stream.stats.bytes_streamed / 1e9
    return [Row("weight_stream", f"{gb:.2f} GB in {seconds:.3f} s = {gb / seconds:.1f} GB/s", "reported", None)]


def check_decode(setup: Setup, state: dict) -> list[Row]:
    from workers.batch import Batch
    from workers.rollout.base import SamplingParams

    rollout = state.setdefault("rollout", _rollout(setup, setup.decode_batch))
    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(3, 100, (setup.decode_batch, 16), generator=g)
    batch = Batch.from_dict({"input_ids": prompts, "attention_mask": torch.ones_like(prompts)})
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=setup.decode_tokens, seed=0,
                            stop_token_ids=())
    rollout.generate(batch, params)  # warm
    setup.sync()
    start = time.perf_counter()
    out = rollout.generate(batch, params)
    setup.sync()
    seconds = time.perf_counter() - start
    tokens = float(out["response_mask"].sum())
    weight_bytes = sum(t.numel() * t.element_size() for t in rollout.model.parameters())
    roofline = HBM_BYTES_PER_S / weight_bytes * setup.decode_batch  # tokens/s if each step only read the weights
    return [Row("decode", f"{tokens / seconds:,.0f} tok/s at batch {setup.decode_batch} = {tokens / seconds / roofline:.1%} "
                f"of the HBM roofline ({roofline:,.0f} tok/s)", "reported", None)]


def check_chunked_logprobs(setup: Setup, state: dict) -> list[Row]:
    from workers.engines.chunked_logprobs import chunked_log_probs
    from workers.losses.entropy import entropy_from_logits

    vocab = 151936 if not setup.dry_run else 512
    rows, width = (8, 1024) if not setup.dry_run else (2, 16)
    logits = torch.randn(rows, width, vocab, device=setup.device,
                         dtype=torch.bfloat16 if not setup.dry_run else torch.float32)
    tokens = torch.randint(0, vocab, (rows, width), device=setup.device)

    def peak(fn: Callable[[], dict]) -> tuple[dict, int]:
        if setup.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        result = fn()
        used = torch.cuda.max_memory_allocated() - base if setup.device.type == "cuda" else 0
        return result, used

    def whole() -> dict:
        scaled = logits.float()
        logp = torch.log_softmax(scaled, -1)
        return {"log_probs": logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), "entropy": entropy_from_logits(scaled)}

    chunked, chunked_peak = peak(lambda: chunked_log_probs(logits, tokens, temperature=1.0, with_entropy=True,
                                                           chunk_positions=1024))
    reference, whole_peak = peak(whole)
    diff = max(float((chunked[k] - reference[k]).abs().max()) for k in ("log_probs", "entropy"))
    figure = f"peak {chunked_peak / 2**30:.2f} vs {whole_peak / 2**30:.2f} GiB one-piece; max diff {diff:.1e}"
    return [Row("chunked_logprobs", figure, "diff <= 1e-5; smaller peak", diff <= 1e-5 and chunked_peak <= whole_peak)]


def check_varlen(setup: Setup, state: dict) -> list[Row]:
    """Compacted rows (SDPA) vs varlen packing on rows of random lengths: log-probs agree, the kernel that ran,
    and the train step's time ratio. On CUDA in bf16 the flash varlen kernel must be the one that ran."""
    from workers.engines import varlen

    kernel_calls = {"flash": 0, "per-row SDPA": 0}
    originals = {attr: getattr(varlen, attr) for attr in ("_flash_varlen", "_per_row_sdpa")}
    for name, attr in (("flash", "_flash_varlen"), ("per-row SDPA", "_per_row_sdpa")):
        def counted(*args, _fn=originals[attr], _name=name):
            kernel_calls[_name] += 1
            return _fn(*args)
        setattr(varlen, attr, counted)
    try:
        return _varlen_rows(setup, kernel_calls)
    finally:
        for attr, fn in originals.items():
            setattr(varlen, attr, fn)


def _varlen_rows(setup: Setup, kernel_calls: dict[str, int]) -> list[Row]:
    from orchestrator.bench.train_bench import make_batch
    from workers.losses.sft import sft_loss

    engines = {name: _fsdp(setup, attention=name) for name in ("sdpa", "varlen")}
    vocab = engines["sdpa"].hf_config.vocab_size
    batch = make_batch(setup.rows * 4, setup.seq // 2, setup.seq - setup.seq // 2, vocab=vocab, seed=5)
    real = batch["response_mask"].bool()
    log_probs, seconds = {}, {}
    for name, engine in engines.items():
        log_probs[name] = engine.compute_log_probs(batch, temperature=1.0, micro_batch_size=setup.rows * 4,
                                                   with_entropy=False)["log_probs"]
        engine.train_mini_batch(batch, sft_loss, micro_batch_size=setup.rows * 4, temperature=1.0, with_entropy=False)
        setup.sync()
        start = time.perf_counter()
        engine.train_mini_batch(batch, sft_loss, micro_batch_size=setup.rows * 4, temperature=1.0, with_entropy=False)
        setup.sync()
        seconds[name] = time.perf_counter() - start
    diff = (log_probs["varlen"] - log_probs["sdpa"])[real].abs()
    ran = "flash" if kernel_calls["flash"] else "per-row SDPA"
    agree = float(diff.max()) <= 1e-5 if setup.dry_run else float(diff.mean()) <= 0.02
    figure = (f"train step {seconds['sdpa'] / seconds['varlen']:.2f}x compacted SDPA ({seconds['varlen']:.3f} vs "
              f"{seconds['sdpa']:.3f} s, {int(real.sum()) + int(batch['attention_mask'][:, :setup.seq // 2].sum())} "
              f"real of {batch['input_ids'].numel()} cells); |d log-prob| mean {float(diff.mean()):.1e} max "
              f"{float(diff.max()):.1e}; kernel {ran} ({sum(kernel_calls.values())} calls)")
    kernel_ok = ran == ("per-row SDPA" if setup.dry_run else "flash")
    return [Row("varlen", figure, "log-probs agree (fp32 1e-5, bf16 mean 0.02); flash kernel on CUDA",
                agree and kernel_ok)]


def check_megatron_bf16(setup: Setup, state: dict) -> list[Row]:
    from workers.engines.fsdp2.spec import OptimSpec
    from workers.engines.megatron.engine import MegatronEngine
    from workers.engines.megatron.spec import MegatronEngineSpec
    from workers.losses.sft import sft_loss

    spec = MegatronEngineSpec(model_path=str(setup.model_dir), model_kind="causal_lm",
                              compute_dtype="float32" if setup.dry_run else "bfloat16", tensor_model_parallel_size=1,
                              pipeline_model_parallel_size=1, sequence_parallel=False, remove_padding=True)
    optim = OptimSpec(lr=1e-5, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, grad_clip=1.0, warmup_steps=0,
                      total_steps=10, schedule="constant", min_lr_ratio=1.0)
    state.pop("engine", None)  # free the FSDP2 model first
    engine = MegatronEngine(spec, optim, device=setup.device)
    batch = _batch(setup, engine.shape.vocab_size)
    setup.sync()
    start = time.perf_counter()
    metrics = engine.train_mini_batch(batch, sft_loss, micro_batch_size=setup.rows, temperature=1.0, with_entropy=False)
    setup.sync()
    seconds = time.perf_counter() - start
    ok = math.isfinite(metrics["grad_norm"]) and metrics["step_skipped"] == 0.0
    return [Row("megatron_bf16", f"step {seconds:.3f} s, grad norm {metrics['grad_norm']:.3g}", "finite step", ok)]


CHECKS: dict[str, Callable[[Setup, dict], list[Row]]] = {
    "fsdp2_step": check_fsdp2_step, "offload": check_offload, "weight_stream": check_weight_stream,
    "decode": check_decode, "chunked_logprobs": check_chunked_logprobs, "varlen": check_varlen,
    "megatron_bf16": check_megatron_bf16,
}


def render(rows: list[Row]) -> str:
    mark = {True: "pass", False: "FAIL", None: "-"}
    width = max(len(r.check) for r in rows)
    return "\n".join(f"{r.check.ljust(width)}  {mark[r.ok]:4}  {r.figure}  [{r.target}]" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, gloo, tiny shapes: exercise the code paths")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run to exercise the paths on CPU)")
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("gloo" if args.dry_run else "nccl", rank=0, world_size=1,
                            timeout=datetime.timedelta(minutes=5))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(device=device, model_dir=_model_dir(TINY if args.dry_run else QWEN05B, Path(tmp)),
                      rows=2 if args.dry_run else 8, seq=32 if args.dry_run else 1024,
                      decode_batch=4 if args.dry_run else 256, decode_tokens=8 if args.dry_run else 128,
                      dry_run=args.dry_run)
        state: dict = {}
        for name, check in CHECKS.items():
            try:
                rows += check(setup, state)
            except Exception as err:  # noqa: BLE001 - one failed check must not hide the others' figures
                traceback.print_exc()
                rows.append(Row(name, f"error: {type(err).__name__}: {str(err)[:120]}", "runs", False))
    dist.destroy_process_group()
    print(f"gpu_check ({'dry run, CPU' if args.dry_run else torch.cuda.get_device_name(0)}, "
          f"torch {torch.__version__})")
    print(render(rows))
    if args.out:
        args.out.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
