"""Named sets of variants of the default job, side by side (orchestrator/bench/variants.py runs them).

Not a test: `baton bench backends|padding|throughput|precision|corrections|async --steps 40 [--write] [key=value ...]`.
- backends: FSDP2 against Megatron-core with tensor parallel 2 and with pipeline parallel 2. Megatron must
  learn as FSDP2 does; s/step shows what each layout costs here (2 CPU ranks: TP and PP add collectives and a
  pipeline bubble that data parallelism does not have).
- padding: every training-side forward on padded [prompt | response] rows against rows with their padding
  removed (workers/engines/compaction.py), and with token-budget micro-batches on top, with FSDP2
  gathering weights per micro-batch or once per pass (workers/engines/fsdp2/gather_once.py). Same
  outputs, so the same learning; s/step shows what the padding cost.
- throughput: the default job as it ran before the throughput work against the current defaults.
- precision: training forwards/backwards in bf16 (fp32 master weights and reductions) against fp32, and
  bf16 rollout on top. Worth making the default only if it is faster and learns as well.
- corrections: the trainer recomputing old log-probs (rollout_correction.mode=none) against bypass (the
  rollout's log-probs are the old ones, no recompute pass) and auto (bypass between verify steps while
  the engines are measured equal). Both must learn as well and be faster.
- async: split placement with one trainer rank and one rollout worker (one core each), trainer.mode=sync
  against one_step_off (step k+1's rollout runs while step k trains; samples one version old) with auto
  (the behaviour policy's log-probs as pi_old) and with tis (pi_old recomputed, importance weights), and
  against async (a producer with rollout.async_calls queued calls, weights taken mid-generation, samples at
  most rollout.max_staleness versions old), and async with rollout.stream=true (request-level generation:
  prompts join the running engine, groups are trained as they end). Both must be faster per step and learn
  within 5 points of sync.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.bench.variants import append_section, run_variants

# One trainer rank and one rollout worker, each on its own core: rollout and training can then overlap.
ONE_CORE_EACH = ["cluster.placement=split", "cluster.devices_per_node=1", "cluster.rollout_devices_per_node=1",
                 "cluster.local_num_cpus=2"]
NO_BUDGETS = [f"{role}.max_tokens_per_micro_batch=null" for role in ("actor", "ref", "critic")]
NOT_PACKED = ["model.share_prompts=false", "model.attn_implementation=sdpa"]  # compacted rows, batched SDPA
SETS: dict[str, tuple[str, str, dict[str, list[str]]]] = {
    "backends": ("backend", "Training backends on the default job", {
        "fsdp2 (dp2)": ["backend=fsdp2"],
        "megatron tp2": ["backend=megatron", "actor.megatron.tensor_model_parallel_size=2"],
        "megatron pp2": ["backend=megatron", "actor.megatron.pipeline_model_parallel_size=2"],
    }),
    "padding": ("training forwards", "Padding removal, token budgets, varlen packing and prompt sharing on the "
                                     "default job", {
        "padded": ["model.remove_padding=false", *NOT_PACKED, *NO_BUDGETS],
        "padding removed": ["model.remove_padding=true", *NOT_PACKED, *NO_BUDGETS],
        "removed + 1024-token budgets, gathered per micro-batch": ["model.fsdp_gather_once=false", *NOT_PACKED],
        "removed + 1024-token budgets": NOT_PACKED,
        "removed + budgets + varlen packing": ["model.share_prompts=false"],
        "removed + budgets + prompt sharing": ["model.attn_implementation=sdpa"],
        "removed + budgets + prompt sharing + varlen (default)": [],
    }),
    "throughput": ("job", "The default job before and after the throughput work (issue 14)", {
        "before: padded rows, whole micro-batches, old log-probs recomputed": [
            "model.remove_padding=false", *NOT_PACKED, *NO_BUDGETS, "algorithm.rollout_correction.mode=none"],
        "2026-12-01 defaults: compacted rows, no prompt sharing": NOT_PACKED,
        "2026-12-02 morning: prompt sharing, family rows padded": ["model.attn_implementation=sdpa"],
        "now: the defaults (sharing + varlen)": [],
    }),
    "precision": ("training dtype", "bf16 autocast vs fp32 on the default job", {
        "fp32": ["model.dtype=float32"],
        "bf16 training (fp32 master)": ["model.dtype=bfloat16"],
        "bf16 training + bf16 rollout": ["model.dtype=bfloat16", "rollout.dtype=bfloat16"],
    }),
    "corrections": ("old log-probs", "Rollout correction: recompute vs bypass on the default job", {
        "recompute (mode=none)": ["algorithm.rollout_correction.mode=none"],
        "bypass": ["algorithm.rollout_correction.mode=bypass"],
        "auto (bypass while verified equal)": ["algorithm.rollout_correction.mode=auto"],
    }),
    "async": ("rollout schedule", "Sync vs one-step-off vs async rollout on the default job, split placement, "
                                  "one core each", {
        "sync": [*ONE_CORE_EACH, "trainer.mode=sync"],
        "one_step_off (auto: behaviour log-probs as pi_old)": [*ONE_CORE_EACH, "trainer.mode=one_step_off"],
        "one_step_off + tis (recompute pi_old, IS weights)": [*ONE_CORE_EACH, "trainer.mode=one_step_off",
                                                              "algorithm.rollout_correction.mode=tis"],
        "async (max_staleness 1, 1 call queued)": [*ONE_CORE_EACH, "trainer.mode=async", "rollout.stream=false"],
        "async, 2 calls queued": [*ONE_CORE_EACH, "trainer.mode=async", "rollout.stream=false",
                                  "rollout.async_calls=2"],
        "async, streamed (continuous batching; the default)": [*ONE_CORE_EACH, "trainer.mode=async",
                                                                "rollout.stream=true"],
    }),
}


def main(argv: list[str] | None = None, *, name: str = "backends") -> None:
    column, title, variants = SETS[name]
    parser = argparse.ArgumentParser(prog=f"baton bench {name}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="RL steps per variant")
    parser.add_argument("--root", type=Path, default=Path(f"outputs/bench/{name}"), help="runs go to ROOT/<variant>")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="run only the variants whose name starts with PREFIX (repeatable: --only sync "
                             "--only 'async, streamed'; names may contain commas)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"bench {name}: --steps must be >= 1")
    if args.only:
        variants = {k: v for k, v in variants.items() if any(k.startswith(w) for w in args.only)}
        if not variants:
            raise SystemExit(f"bench {name}: --only {args.only} matches none of: {' | '.join(SETS[name][2])}")
    table = run_variants(column, variants, args.steps, args.root, list(args.overrides))
    if args.write:
        command = " ".join([f"baton bench {name}", f"--steps {args.steps}",
                            *[f"--only '{w}'" for w in args.only], *args.overrides])
        append_section(f"{title} (`baton bench {name}`)", command,
                       "GRPO from the shipped warm start, one run per variant in turn. Val accuracy: greedy, 256 test "
                       "prompts, before the first and after the last step; s/step: the loop's wall time (validation "
                       "included) / steps.", table)


if __name__ == "__main__":
    main()
