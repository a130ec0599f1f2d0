"""How much a checkpoint leaves for RL to find: greedy accuracy vs sampled accuracy and pass@k on the test split.

`baton bench sampling [--k 8] [--temperature 1.0] [overrides]` evaluates `model.path` with the built-in engine
in this process (no Ray). Answers that start with the answer marker are "direct", the rest show their working;
accuracy is reported per kind, because the gap between them is what GRPO exploits on the default task.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from orchestrator.config import compose_config, validate_config
from orchestrator.rewards.registry import score_batch
from orchestrator.trainer.data import load_rows, prompts_to_batch, task_files
from orchestrator.trainer.rewards import decode_responses
from workers.rollout.base import SamplingParams
from workers.rollout.builtin import BuiltinRolloutEngine


def _answers(engine: BuiltinRolloutEngine, rows: list[dict], tok, cfg, *, n: int, temperature: float,
             seed: int) -> tuple[list[str], np.ndarray]:
    batch = engine.generate(prompts_to_batch(rows, tok, uid_prefix="eval"), SamplingParams(
        n=n, temperature=temperature, top_p=1.0, top_k=-1, max_new_tokens=cfg.rollout.max_new_tokens, seed=seed,
        stop_token_ids=(tok.eos_token_id,)))
    texts = decode_responses(batch, tok)
    truths = [r["ground_truth"] for r in rows for _ in range(n)]
    return texts, score_batch(cfg.reward.accuracy_fn, texts, truths, eos_token=tok.eos_token)


def _by_kind(texts: list[str], correct: np.ndarray, marker: str) -> str:
    direct = np.array([t.lstrip().startswith(marker) for t in texts])
    parts = []
    for name, mask in (("direct", direct), ("worked", ~direct)):
        acc = f"{correct[mask].mean():.1%}" if mask.any() else "-"
        parts.append(f"{name} {mask.mean():.1%} of answers, {acc} right")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=8, help="samples per prompt for sampled accuracy and pass@k")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--prompts", type=int, default=256, help="test prompts (the first N of the split)")
    parser.add_argument("--marker", default="#", help="answers starting with this are counted as direct")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.path=outputs/cache/warmstart/x")
    args = parser.parse_args(argv)
    cfg = validate_config(compose_config(list(args.overrides)), check_files=False)
    torch.set_num_threads(2)
    from orchestrator.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.model.path)
    rows = load_rows(task_files(cfg)[1], cfg, tok)[: args.prompts]
    engine = BuiltinRolloutEngine.from_pretrained(
        cfg.model.path, dtype="float32", device="cpu", max_batch_size=len(rows) * args.k,
        max_seq_len=cfg.data.max_prompt_length + cfg.rollout.max_new_tokens, pad_token_id=tok.pad_token_id)
    greedy_texts, greedy = _answers(engine, rows, tok, cfg, n=1, temperature=0.0, seed=0)
    texts, sampled = _answers(engine, rows, tok, cfg, n=args.k, temperature=args.temperature, seed=1)
    pass_k = sampled.reshape(len(rows), args.k).max(axis=1).mean()
    print(f"{cfg.model.path}: {len(rows)} test prompts, accuracy_fn={cfg.reward.accuracy_fn}")
    print(f"  greedy           {greedy.mean():.1%}   ({_by_kind(greedy_texts, greedy, args.marker)})")
    print(f"  sampled T={args.temperature:<5} {sampled.mean():.1%}   ({_by_kind(texts, sampled, args.marker)})")
    print(f"  pass@{args.k:<11} {pass_k:.1%}")


if __name__ == "__main__":
    main()
