"""`baton` command line: train, sft, rm, run-default, bench. Config overrides are Hydra-style `key=value`."""
from __future__ import annotations

import sys

from omegaconf import OmegaConf

from orchestrator import stop_signal
from orchestrator.config import ConfigError, compose_config, list_groups, validate_config
from orchestrator.config.load import missing_values
from orchestrator.run_errors import RunEnded

USAGE = """usage: baton <command> [options] [key=value ...]

commands:
  train        RL training (default: GRPO on the built-in arithmetic task)
  sft          supervised warm start on the task's worked solutions
  rm           reward model (Bradley-Terry) on preference pairs; default: pairs from the task
  run-default  what `make run` does: the warm start (cached / shipped / sft), then train
  warm-start   rebuild the warm start shipped in the repo: sft, then store it as bf16 (`make warm-start`)
  submit       run train/sft/rm as a Ray Job on a cluster: `baton submit [--follow] [--address URL] key=value ...`
  jobs         `baton jobs list | status ID | logs ID [--follow] | stop ID`
  cluster      `baton cluster up --nodes 2 | down | status | kill-node I`: a multi-node Ray cluster on this machine
  bench        benchmarks: `baton bench rollout | sync | train | algorithms | backends | padding | throughput | precision | corrections | async | sampling | e2e`

train/sft/rm options:
  --cfg job    print the composed config and exit
  --help       list config groups and options
"""


def _print_help(command: str) -> None:
    print(f"usage: baton {command} [--cfg job] [group=option ...] [key=value ...]\n")
    print("== Configuration groups ==")
    for group, options in list_groups().items():
        print(f"  {group}: {', '.join(options)}")
    print("\nExamples:\n  baton train algorithm=dapo\n  baton train preset=smoke rollout=vllm\n"
          "  baton train --cfg job algorithm=ppo trainer.total_steps=10")


def _config(command: str, argv: list[str]):
    """Parse `--cfg job` / `--help`, compose and validate; None when the command is done already."""
    if "--help" in argv or "-h" in argv:
        _print_help(command)
        return None
    print_only = False
    if "--cfg" in argv:
        i = argv.index("--cfg")
        if argv[i + 1:i + 2] != ["job"]:
            raise SystemExit("baton: only `--cfg job` is supported")
        print_only = True
        argv = argv[:i] + argv[i + 2:]
    if print_only:
        cfg = compose_config(argv, allow_missing=True)
        missing = missing_values(cfg)
        if missing:  # what a person still has to pass; the rest is printed as it would run
            print(f"# required, not set yet: {', '.join(missing)}")
        else:
            validate_config(cfg, check_files=False)
        print(OmegaConf.to_yaml(cfg), end="")
        return None
    cfg = compose_config(argv)
    validate_config(cfg, check_files=False)
    return cfg


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    try:
        if command == "bench":
            from orchestrator.bench.cli import bench_main

            bench_main(rest)
            return
        if command in ("submit", "jobs", "cluster"):
            from orchestrator.cluster import cli as cluster_cli

            getattr(cluster_cli, f"{command}_main")(rest)
            return
        if command not in ("train", "sft", "rm", "run-default", "warm-start"):
            raise SystemExit(f"baton: unknown command '{command}'\n\n{USAGE}")
        cfg = _config(command, rest)
        if cfg is None:
            return
        stop_signal.install()  # `baton jobs stop`, a scheduler's preemption
        if command == "train":
            from orchestrator.entry import train

            train(cfg)
        elif command == "sft":
            from orchestrator.entry import sft

            sft(cfg)
        elif command == "warm-start":
            from orchestrator.entry import rebuild_shipped_warm_start

            rebuild_shipped_warm_start(cfg)
        elif command == "rm":
            from orchestrator.rm_training import train_reward_model

            train_reward_model(cfg)
        else:
            from orchestrator.entry import run_default

            run_default(cfg)
    except ConfigError as err:
        print(f"baton: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunEnded as err:
        print(f"baton: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except stop_signal.StopRequested:
        print("baton: stopped by SIGTERM; workers shut down, `latest` is the last complete checkpoint",
              file=sys.stderr)
        raise SystemExit(143) from None


if __name__ == "__main__":
    main()
