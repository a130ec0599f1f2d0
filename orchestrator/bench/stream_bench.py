"""`baton bench stream`: the built-in engine's one generate call against its continuous-batching stream.

Not a test. Same engine, weights, prompts and sampling; the default job's shape (the shipped warm start,
data.train_batch_size prompts x rollout.n samples, real stop tokens, so lengths differ). Each row cap
(rollout.max_batch_size) is timed with the two runners interleaved. Under a cap, one call decodes the rows in
groups, each waiting for its slowest row; the stream refills a row as soon as it ends. With no cap that binds,
both decode everything at once and should tie.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable

import torch

from orchestrator.bench.timing import time_interleaved
from orchestrator.bench.variants import append_section


def _runners(engine: Any, batch: Any, params: Any) -> dict[str, Callable[[], int]]:
    from workers.rollout.streaming import request_for

    requests = [request_for(batch.index([i]), seed=0) for i in range(len(batch))]

    def one_call() -> int:
        out, _ = engine.generate_tensors(batch["input_ids"], batch["attention_mask"], params)
        return int(out["response_mask"].sum())

    def stream() -> int:
        engine.start_stream(params)
        engine.add(requests)
        tokens = 0
        while engine.pending():
            tokens += sum(len(t) for g in engine.step() for t in g.tokens)
        engine.end_stream()
        return tokens

    return {"one call": one_call, "stream (continuous batching)": stream}


def run(caps: list[int], repeats: int, overrides: list[str]) -> list[list[str]]:
    from orchestrator.config import compose_config, validate_config
    from orchestrator.entry import ensure_warm_start
    from orchestrator.tokenizer import load_tokenizer
    from orchestrator.trainer.data import PromptStream, load_train_val_rows, prompts_to_batch
    from workers.rollout.base import SamplingParams
    from workers.rollout.builtin.engine import BuiltinRolloutEngine

    cfg = validate_config(compose_config(overrides), check_files=False)
    ensure_warm_start(cfg)
    torch.set_num_threads(1)
    tok = load_tokenizer(cfg.model.path)
    train_rows, _ = load_train_val_rows(cfg, tok)
    rows = PromptStream(train_rows, cfg.data.train_batch_size, cfg.trainer.seed, cfg.data.shuffle).next_rows()
    batch = prompts_to_batch(rows, tok, uid_prefix="bench")
    r = cfg.rollout
    params = SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_new_tokens=r.max_new_tokens, seed=1, stop_token_ids=(tok.eos_token_id,))
    table = []
    for cap in caps:
        engine = BuiltinRolloutEngine.from_pretrained(cfg.model.path, dtype=r.dtype, device="cpu", max_batch_size=cap,
                                                      max_seq_len=cfg.data.max_prompt_length + r.max_new_tokens)
        runners = _runners(engine, batch, params)
        tokens = {name: fn() for name, fn in runners.items()}
        times = time_interleaved(runners, repeats)
        # the two modes sample in a different order, so their tokens differ: compare tokens per second
        rate = {name: tokens[name] / statistics.median(seconds) for name, seconds in times.items()}
        for name, seconds in times.items():
            table.append([str(cap), name, f"{len(batch)} x {r.n}", str(tokens[name]),
                          f"{statistics.median(seconds):.3f}", f"{rate[name]:,.0f}",
                          f"{rate[name] / rate['one call']:.2f}x"])
            print(" | ".join(table[-1]), flush=True)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="baton bench stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caps", default="16,32,512", help="rollout.max_batch_size values (rows decoded at once)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (model, task, rollout.n, ...)")
    args = parser.parse_args(argv)
    caps = [int(c) for c in args.caps.split(",")]
    table = run(caps, args.repeats, list(args.overrides))
    header = ["row cap", "mode", "prompts x n", "tokens", "s (median)", "tok/s", "tok/s vs one call"]
    text = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in table])
    print(text)
    if args.write:
        append_section("Built-in engine: one call vs continuous batching (`baton bench stream`)",
                       " ".join(["baton bench stream", f"--caps {args.caps}", f"--repeats {args.repeats}",
                                 *args.overrides]),
                       "The default job's prompts (one batch of data.train_batch_size) and sampling, shipped warm "
                       "start, fp32, one thread; the two modes interleaved per repeat.", text)
