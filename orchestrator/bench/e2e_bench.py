"""`baton bench e2e`: Baton's default job against TRL's GRPOTrainer on the same job, alternating in one run.

Same warm start (the shipped checkpoint), train prompts, 256 greedy validation prompts, `final_answer`
reward, group size, lengths, lr and KL coefficient (orchestrator/bench/peers/trl_grpo.py maps them). TRL
runs in its own venv (`make bench-peers`, .venv-peers), never in Baton's.

Timing: seconds per RL step of training only. Baton: each step's `timing_s/step` less its validation and
checkpoint time; TRL: `trainer.train()` wall time / RL steps (it neither validates nor saves inside). The
greedy accuracy before and after is measured the same way on both sides (greedy, same prompts, same rule);
the two "before" figures should agree, which checks that both sides see the same model, prompts and rule.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

from orchestrator.bench.variants import append_section, run_config, run_one

PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "trl_grpo.py"
PEER_PYTHON = Path(__file__).resolve().parents[2] / ".venv-peers" / "bin" / "python"
COLUMNS = ("run", "s/step (train only)", "val acc before", "val acc after", "change (points)", "reward start -> end")


def baton_train_seconds_per_step(metrics_jsonl: Path) -> float:
    """Mean per-step wall time without validation and checkpointing (which TRL's loop does not do)."""
    records = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("timing_s/step") is not None]
    if not steps:
        raise RuntimeError(f"{metrics_jsonl}: no step timings")
    own = [r["timing_s/step"] - (r.get("timing_s/validate") or 0.0) - (r.get("timing_s/save") or 0.0) for r in steps]
    return sum(own) / len(own)


def peer_job(cfg, steps: int, out: Path) -> dict[str, Any]:
    """What the TRL side needs, read from Baton's composed config and its own data loading."""
    from orchestrator.entry import ensure_model_for_train, tokenizer_for
    from orchestrator.trainer.data import load_train_val_rows

    ensure_model_for_train(cfg)
    tok = tokenizer_for("model.path", cfg.model.path)
    train_rows, val_rows = load_train_val_rows(cfg, tok)
    val_rows = val_rows[: cfg.data.val_size] if cfg.data.val_size else val_rows
    keep = ("prompt", "ground_truth")
    return {
        "model_path": str(Path(cfg.model.path).resolve()), "output_dir": str(out), "seed": int(cfg.trainer.seed),
        "threads": int(cfg.cluster.devices_per_node * cfg.cluster.cpus_per_worker), "steps": steps,
        "n": int(cfg.rollout.n), "prompts_per_step": int(cfg.data.train_batch_size),
        "prompts_per_update": int(cfg.actor.ppo_mini_batch_size), "micro_batch_rows": int(cfg.actor.micro_batch_size),
        "max_new_tokens": int(cfg.rollout.max_new_tokens), "kl_coef": float(cfg.actor.kl_loss_coef),
        "lr": float(cfg.actor.optim.lr), "warmup_steps": int(cfg.actor.optim.warmup_steps),
        "train_rows": [{k: str(r[k]) for k in keep} for r in train_rows],
        "val_rows": [{k: str(r[k]) for k in keep} for r in val_rows],
    }


def check_job_matches(cfg) -> None:
    """The mapping in peers/trl_grpo.py covers GRPO with a KL loss (k3, token-mean) and PPO clip 0.2 only."""
    wanted = {"algorithm.adv_estimator": (cfg.algorithm.adv_estimator, "grpo"),
              "actor.use_kl_loss": (cfg.actor.use_kl_loss, True), "actor.kl_loss_type": (cfg.actor.kl_loss_type, "k3"),
              "actor.loss_agg_mode": (cfg.actor.loss_agg_mode, "token-mean"),
              "actor.policy_loss.clip_ratio_low": (cfg.actor.policy_loss.clip_ratio_low, 0.2),
              "actor.policy_loss.clip_ratio_high": (cfg.actor.policy_loss.clip_ratio_high, 0.2),
              "actor.ppo_epochs": (cfg.actor.ppo_epochs, 1), "rollout.temperature": (cfg.rollout.temperature, 1.0)}
    for key, (got, want) in wanted.items():
        if got != want:
            raise SystemExit(f"bench e2e: TRL is configured for {key}={want}, but this job has {got}")


def run_baton(steps: int, root: Path, overrides: list[str]) -> dict[str, Any]:
    summary = run_one("baton", [], steps, root, overrides)
    own = baton_train_seconds_per_step(Path(summary["paths"]["metrics_jsonl"]))
    return {**summary, "seconds_per_step": own}


def run_trl(job_file: Path, out: Path) -> dict[str, Any]:
    result = out / "result.json"
    result.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "OMP_"))}
    subprocess.run([str(PEER_PYTHON), str(PEER_SCRIPT), str(job_file), str(result)], check=True, env=env,
                   timeout=7200)
    return json.loads(result.read_text())


def row(name: str, r: dict[str, Any]) -> list[str]:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    num = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    change = None if r.get("accuracy_end") is None else 100 * (r["accuracy_end"] - r["accuracy_start"])
    return [name, f"{r['seconds_per_step']:.2f}", pct(r.get("accuracy_start")), pct(r.get("accuracy_end")),
            "n/a" if change is None else f"{change:+.1f}", f"{num(r.get('reward_start'))} -> {num(r.get('reward_end'))}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="baton bench e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="RL steps per run")
    parser.add_argument("--rounds", type=int, default=1, help="Baton, TRL pairs (alternating)")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench/e2e"))
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for Baton's job (and what TRL mirrors)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        raise SystemExit("bench e2e: --steps and --rounds must be >= 1")
    if not PEER_PYTHON.exists():
        raise SystemExit(f"bench e2e: {PEER_PYTHON} is missing; run `make bench-peers` (TRL in its own venv)")
    overrides = ["trainer.val_every=0", *args.overrides]
    cfg = run_config("baton", [], args.steps, args.root, overrides)  # a bad override fails here
    check_job_matches(cfg)
    trl_out = (args.root / "trl").resolve()
    trl_out.mkdir(parents=True, exist_ok=True)
    job_file = trl_out / "job.json"
    job_file.write_text(json.dumps(peer_job(cfg, args.steps, trl_out)))
    rows, ratios = [], []
    for k in range(args.rounds):
        baton = run_baton(args.steps, args.root, overrides)
        trl = run_trl(job_file, trl_out)
        ratios.append(trl["seconds_per_step"] / baton["seconds_per_step"])
        rows += [row(f"Baton (round {k + 1})", baton), row(f"TRL GRPOTrainer (round {k + 1})", trl)]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)] + ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    verdict = (f"Baton steps/s / TRL steps/s: {', '.join(f'{x:.2f}x' for x in ratios)} "
               f"(median {median(ratios):.2f}x)")
    print(table)
    print(verdict)
    if args.write:
        command = " ".join(["baton bench e2e", f"--steps {args.steps}", f"--rounds {args.rounds}", *args.overrides])
        append_section("Baton vs TRL GRPOTrainer on the default job (`baton bench e2e`)", command,
                       "Same warm start, prompts, reward, group size, lengths, lr and KL; alternating in one run. "
                       "s/step: training only (validation and checkpoints left out). Val accuracy: greedy on the "
                       f"same 256 test prompts. {verdict}.", table)


if __name__ == "__main__":
    sys.exit(main())
