"""Training-side throughput: padded rows against rows with their padding removed, side by side.

Not a test: `baton bench train [--shapes 16x24,64x192] [--rows 64] [--write]`. For each shape
(prompt width x response width) one batch is drawn with real lengths uniform in [1, width] (the
default job's rollouts fill about half of their row), and six FSDP2 engines on the same weights
run it in turn, `repeats` rounds: padded (model.remove_padding=false), padding removed, removed with a
token budget per micro-batch, and that with varlen packing (model.attn_implementation=varlen), with
prompt sharing (model.share_prompts), or with both. With `--group-size n`
rows come n to a prompt, as GRPO samples them (the default job: 8); sharing needs n > 1. Reported per
engine and pass (log-probs: forward only; update: forward + backward + optimizer step):

- real tok/s: attended tokens / seconds, the throughput a user gets;
- MFU: model FLOPs on the tokens the forward computes (the real tokens; with prompt sharing each
  prompt once per group) (2 N per token forward, 6 N with backward, N and the rest of the convention
  as in orchestrator/tracking/flops.py) / seconds / this machine's measured peak: the best fp32
  GFLOP/s of a 1024^2 matmul on the same threads in this process, measured first.

With `--megatron`, two Megatron-core engines (TP = PP = 1) run the same batch in the same rounds:
padded rows and rows with their padding removed (sorted by length into micro-batches of
`--megatron-micro-batch-size` rows, each cut to its longest row; workers/engines/megatron/batching.py).
Their speed-up is against the padded Megatron engine.

One rank, one torch thread by default (what each Ray actor gets), the shipped tiny model's shape.
"""
from __future__ import annotations

import argparse
import datetime
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.bench.timing import median_seconds

LAYOUT_BUDGET = 1024  # tokens per compacted micro-batch / per packed row in the --layouts comparison
VARIANTS: dict[str, dict[str, Any]] = {
    "padded": {"remove_padding": False, "max_tokens_per_micro_batch": None, "gather_once": True},
    "removed": {"remove_padding": True, "max_tokens_per_micro_batch": None, "gather_once": True},
    "removed+budget": {"remove_padding": True, "max_tokens_per_micro_batch": 512, "gather_once": True},
    "removed+budget+varlen": {"remove_padding": True, "max_tokens_per_micro_batch": 512, "gather_once": True,
                              "attn_implementation": "varlen"},
    "removed+budget+shared": {"remove_padding": True, "max_tokens_per_micro_batch": 512, "gather_once": True,
                              "share_prompts": True},
    "removed+budget+shared+varlen": {"remove_padding": True, "max_tokens_per_micro_batch": 512, "gather_once": True,
                                     "share_prompts": True, "attn_implementation": "varlen"},
}


def make_batch(rows: int, prompt_width: int, response_width: int, vocab: int, seed: int, group: int = 1) -> Any:
    """Rollout-layout rows with real prompt/response lengths uniform in [1, width]; each run of `group`
    rows shares one prompt (GRPO's n samples of a prompt)."""
    from workers.batch import Batch

    g = torch.Generator().manual_seed(seed)
    width = prompt_width + response_width
    ids = torch.zeros(rows, width, dtype=torch.long)
    attn = torch.zeros(rows, width, dtype=torch.long)
    for i in range(rows):
        drawn = int(torch.randint(1, prompt_width + 1, (1,), generator=g))
        rl = int(torch.randint(1, response_width + 1, (1,), generator=g))
        tokens = torch.randint(3, vocab, (drawn + rl,), generator=g)
        if i % group == 0:  # a new prompt; the rest of its group reuses it
            pl, prompt = drawn, tokens[:drawn]
        ids[i, prompt_width - pl:prompt_width] = prompt
        ids[i, prompt_width:prompt_width + rl] = tokens[drawn:]
        attn[i, prompt_width - pl:prompt_width + rl] = 1
    return Batch.from_dict({
        "input_ids": ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
        "responses": ids[:, prompt_width:].clone(), "response_mask": attn[:, prompt_width:].clone(),
    })


def _engine(path: Path, over: dict[str, Any]) -> Any:
    from workers.engines.fsdp2 import FSDPEngine
    from workers.engines.fsdp2.spec import FSDPEngineSpec, OptimSpec

    spec = FSDPEngineSpec(model_path=str(path), model_kind="causal_lm", master_dtype="float32", param_dtype="float32",
                          reduce_dtype="float32", reshard_after_forward=True, activation_checkpointing=False,
                          cpu_offload=False, seed=0, **{"attn_implementation": "sdpa", **over})
    optim = OptimSpec(lr=1e-6, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, grad_clip=1.0, warmup_steps=0,
                      total_steps=10_000, schedule="constant", min_lr_ratio=0.0)
    return FSDPEngine(spec, optim, device=torch.device("cpu"))


MEGATRON_VARIANTS = {"megatron padded": False, "megatron removed": True}


def _megatron_engine(path: Path, remove_padding: bool) -> Any:
    from workers.engines.fsdp2.spec import OptimSpec
    from workers.engines.megatron.engine import MegatronEngine
    from workers.engines.megatron.spec import MegatronEngineSpec

    spec = MegatronEngineSpec(model_path=str(path), model_kind="causal_lm", compute_dtype="float32",
                              tensor_model_parallel_size=1, pipeline_model_parallel_size=1, sequence_parallel=False,
                              remove_padding=remove_padding)
    optim = OptimSpec(lr=1e-6, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, grad_clip=1.0, warmup_steps=0,
                      total_steps=10_000, schedule="constant", min_lr_ratio=0.0)
    return MegatronEngine(spec, optim, device=torch.device("cpu"))


def run(shapes: list[tuple[int, int]], rows: int, micro_batch_size: int, repeats: int, threads: int,
        layouts: bool = False, group: int = 1, megatron_micro_batch_size: int | None = None) -> list[dict]:
    """`megatron_micro_batch_size`: also time the Megatron engines, at this many rows per micro-batch."""
    from orchestrator.assets.tiny_model import build_tiny_model
    from workers.engines.prompt_sharing import computed_tokens
    from workers.losses.sft import sft_loss

    from orchestrator.tracking.flops import matmul_params, matmul_peak_flops

    torch.set_num_threads(threads)
    peak = matmul_peak_flops(size=1024, threads=threads) / 1e9
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29571")
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp}/rendezvous",
                                timeout=datetime.timedelta(minutes=5))
        try:
            longest = max(p + r for p, r in shapes)
            path = build_tiny_model(Path(tmp) / "model", arch="qwen2", hidden_size=256, num_layers=4, num_heads=8,
                                    num_kv_heads=4, intermediate_size=768, max_position_embeddings=longest,
                                    seed=0, tie_word_embeddings=True)
            engines = {name: _engine(path, over) for name, over in VARIANTS.items()}
            micro = {name: micro_batch_size for name in engines}
            if megatron_micro_batch_size:
                engines.update({name: _megatron_engine(path, rp) for name, rp in MEGATRON_VARIANTS.items()})
                micro.update({name: megatron_micro_batch_size for name in MEGATRON_VARIANTS})
            params = matmul_params(path)  # the FLOP model of orchestrator/tracking/flops.py
            vocab = next(iter(engines.values())).hf_config.vocab_size
            table = []
            for prompt_width, response_width in shapes:
                batch = make_batch(rows, prompt_width, response_width, vocab=vocab,
                                   seed=prompt_width * 1000 + response_width, group=group)
                real = int(batch["attention_mask"].sum())
                shared = computed_tokens(batch["attention_mask"], prompt_width, [i // group for i in range(rows)])
                passes = {
                    "log-probs": (2, lambda e, m: e.compute_log_probs(batch, temperature=1.0, micro_batch_size=m,
                                                                      with_entropy=False)),
                    "update": (6, lambda e, m: e.train_mini_batch(batch, sft_loss, micro_batch_size=m,
                                                                  temperature=1.0, with_entropy=False)),
                }
                for pass_name, (flops_per_param, call) in passes.items():
                    times = median_seconds({n: (lambda e=e, m=micro[n], call=call: call(e, m))
                                            for n, e in engines.items()}, repeats)
                    for name, seconds in times.items():
                        base = "megatron padded" if name in MEGATRON_VARIANTS else "padded"
                        computed = shared if VARIANTS.get(name, {}).get("share_prompts") else real
                        table.append({"shape": f"{prompt_width}x{response_width}", "rows": rows, "pass": pass_name,
                                      "variant": name, "seconds": seconds, "real_tokens": real,
                                      "row_tokens": rows * (prompt_width + response_width),
                                      "tok_s": real / seconds,
                                      "mfu": flops_per_param * params * computed / seconds / (peak * 1e9),
                                      "speedup": times[base] / seconds})
                if layouts:
                    times = run_layouts(path, batch, micro_batch_size, LAYOUT_BUDGET, repeats)
                    for name, seconds in times.items():
                        table.append({"shape": f"{prompt_width}x{response_width}", "rows": rows,
                                      "pass": "fwd+bwd, plain HF model", "variant": name, "seconds": seconds,
                                      "real_tokens": real, "row_tokens": rows * (prompt_width + response_width),
                                      "tok_s": real / seconds, "mfu": 6 * params * real / seconds / (peak * 1e9),
                                      "speedup": times["padded"] / seconds})
        finally:
            dist.destroy_process_group()
    print(f"peak (fp32 1024^3 matmul, {threads} thread(s)): {peak:.1f} GFLOP/s; model {params / 1e6:.2f}M params")
    return table


def _sequences(batch: Any) -> list[torch.Tensor]:
    mask = batch["attention_mask"].bool()
    return [batch["input_ids"][i][mask[i]] for i in range(len(mask))]


def _padded_inputs(seqs: list[torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], attn[i, :len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0)}


def _packed_inputs(groups: list[list[torch.Tensor]], width: int) -> dict[str, torch.Tensor]:
    """Sequences end to end in each row, positions restarting per sequence, a block-diagonal causal mask."""
    ids = torch.zeros(len(groups), width, dtype=torch.long)
    pos = torch.zeros(len(groups), width, dtype=torch.long)
    seg = torch.full((len(groups), width), -1, dtype=torch.long)
    for i, group in enumerate(groups):
        at = 0
        for k, s in enumerate(group):
            ids[i, at:at + len(s)], pos[i, at:at + len(s)], seg[i, at:at + len(s)] = s, torch.arange(len(s)), k
            at += len(s)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    mask = causal[None] & (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    mask |= torch.eye(width, dtype=torch.bool)[None]  # padding attends to itself: no all-masked row (NaN)
    return {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": pos}


def layout_inputs(batch: Any, micro_batch_size: int, budget: int) -> dict[str, list[dict[str, torch.Tensor]]]:
    """The same sequences as model inputs four ways: padded rows, compacted length-sorted rows under a
    token budget (what the engine does), and packed rows of <= budget tokens with a block-diagonal mask
    or with row boundaries for the varlen kernel (model.attn_implementation=varlen)."""
    seqs = _sequences(batch)
    width = batch["input_ids"].shape[1]
    padded = [_padded_inputs(seqs[i:i + micro_batch_size], width) for i in range(0, len(seqs), micro_batch_size)]
    ordered = sorted(seqs, key=len, reverse=True)
    compacted, current = [], []
    for s in ordered:
        if current and (len(current) + 1) * len(current[0]) > budget or len(current) == micro_batch_size:
            compacted.append(_padded_inputs(current, len(current[0])))
            current = []
        current.append(s)
    compacted.append(_padded_inputs(current, len(current[0])))
    rows: list[list[torch.Tensor]] = []  # first fit, longest first
    for s in ordered:
        for row in rows:
            if sum(len(x) for x in row) + len(s) <= budget:
                row.append(s)
                break
        else:
            rows.append([s])
    # one packed row (<= budget tokens) per forward: the same tokens per micro-batch as a compacted one
    packed = [_packed_inputs([row], sum(len(x) for x in row)) for row in rows]
    return {"padded": padded, "compacted": compacted, "packed (block-diagonal mask)": packed,
            "packed (varlen)": [_varlen_inputs(row) for row in rows]}


def _varlen_inputs(row: list[torch.Tensor]) -> dict[str, Any]:
    """One packed row with its boundaries for the varlen kernel (workers/engines/varlen.py), no mask."""
    lengths = torch.tensor([len(s) for s in row])
    cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    return {"input_ids": torch.cat(row)[None], "position_ids": torch.cat([torch.arange(len(s)) for s in row])[None],
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": int(lengths.max()),
            "max_length_k": int(lengths.max())}


def run_layouts(path: Path, batch: Any, micro_batch_size: int, budget: int, repeats: int) -> dict[str, float]:
    """Seconds of forward + backward over all micro-batches of each layout, on the plain HF model (built with the
    varlen kernel, which runs SDPA for the layouts that pass a mask)."""
    from transformers import AutoModelForCausalLM

    from workers.engines.fsdp2.build import hf_attention

    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=hf_attention("varlen"),
                                                 dtype=torch.float32)
    layouts = layout_inputs(batch, micro_batch_size, budget)

    def step(inputs: list[dict[str, torch.Tensor]]) -> None:
        for mb in inputs:
            model(**mb, use_cache=False).logits.float().mean().backward()
        model.zero_grad(set_to_none=True)

    return median_seconds({name: (lambda inputs=inputs: step(inputs)) for name, inputs in layouts.items()}, repeats)


def render(table: list[dict]) -> str:
    lines = ["| shape (P x R) | rows | pass | variant | real tokens / row tokens | s | real tok/s | MFU | vs padded |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['shape']} | {r['rows']} | {r['pass']} | {r['variant']} | {r['real_tokens']} / "
                     f"{r['row_tokens']} | {r['seconds']:.3f} | {r['tok_s']:,.0f} | {100 * r['mfu']:.1f}% | "
                     f"{r['speedup']:.2f}x |")
    return "\n".join(lines)


def _shape(text: str) -> tuple[int, int]:
    prompt, _, response = text.partition("x")
    return int(prompt), int(response)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="baton bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="16x24,64x192", help="prompt_width x response_width, comma-separated")
    parser.add_argument("--rows", type=int, default=64, help="rows per batch (the default job: 64 per rank)")
    parser.add_argument("--micro-batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Ray actor gets 1)")
    parser.add_argument("--layouts", action="store_true",
                        help="also time padded vs compacted vs packed (block-diagonal SDPA mask, varlen) rows on the plain model")
    parser.add_argument("--group-size", type=int, default=1, help="rows per prompt (GRPO's n; the default job: 8)")
    parser.add_argument("--megatron", action="store_true", help="also time Megatron-core, padded vs padding removed")
    parser.add_argument("--megatron-micro-batch-size", type=int, default=8, help="rows per Megatron micro-batch")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.group_size < 1:
        raise SystemExit("bench train: --group-size must be >= 1")
    shapes = [_shape(s) for s in args.shapes.split(",")]
    table = render(run(shapes, args.rows, args.micro_batch_size, args.repeats, args.threads, args.layouts,
                       args.group_size, args.megatron_micro_batch_size if args.megatron else None))
    print(table)
    if args.write:
        from orchestrator.bench.variants import append_section

        command = (f"baton bench train --shapes {args.shapes} --rows {args.rows} --micro-batch-size "
                   f"{args.micro_batch_size} --repeats {args.repeats} --threads {args.threads}"
                   + (" --layouts" if args.layouts else "") + f" --group-size {args.group_size}"
                   + (f" --megatron --megatron-micro-batch-size {args.megatron_micro_batch_size}"
                      if args.megatron else ""))
        append_section("Training throughput: padded vs padding removed (`baton bench train`)", command,
                       f"FSDP2{' and Megatron-core (TP = PP = 1)' if args.megatron else ''}, one rank, the tiny "
                       f"model's shape; real lengths uniform in [1, width], {args.group_size} row(s) per prompt; "
                       "median of the repeats, variants interleaved; MFU against the measured matmul peak.", table)


if __name__ == "__main__":
    main()
