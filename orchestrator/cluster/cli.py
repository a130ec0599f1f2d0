"""Command-line front of the cluster commands: `baton cluster`, `baton submit`, `baton jobs`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.cluster import jobs, local_cluster


def cluster_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="baton cluster", description="A multi-node Ray cluster on this machine.")
    sub = ap.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start a head and worker nodes (separate `ray start`s, bound to 127.0.0.1)")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--cpus-per-node", type=int, default=1)
    up.add_argument("--object-store-mb", type=int, default=256)
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every node")
    kill = sub.add_parser("kill-node", help="end one worker node abruptly, as `ray stop` on that machine would")
    kill.add_argument("index", type=int, help="node index (0 is the head)")
    for p in (up, kill, sub.add_parser("down", help="stop this cluster's processes (and no other Ray's)"),
              sub.add_parser("status", help="nodes and addresses")):
        p.add_argument("--dir", type=Path, default=None, help="cluster state dir (default $BATON_CLUSTER_DIR "
                                                              f"or {local_cluster.default_dir()})")
    args = ap.parse_args(argv)
    if args.action == "up":
        c = local_cluster.up(args.nodes, args.cpus_per_node, args.object_store_mb << 20, args.dir, args.timeout)
        print(f"cluster: {len(c.nodes)} node(s) up, {args.cpus_per_node} CPU each")
        print(f"  ray address:  {c.address}   (cluster.address={c.address}, or RAY_ADDRESS)")
        print(f"  job server:   {c.dashboard}   (`baton submit` uses it by default)")
        print(f"  state, logs:  {c.directory}")
        print("  stop it:      baton cluster down")
    elif args.action == "kill-node":
        node = local_cluster.kill_node(args.index, args.dir)
        print(f"cluster: killed {node.name}")
    elif args.action == "down":
        n = local_cluster.down(args.dir)
        print(f"cluster: stopped {n} process(es)" if n else "cluster: nothing was running")
    else:
        c = local_cluster.LocalCluster.load(args.dir)
        if c is None:
            raise SystemExit("cluster: none started here (`baton cluster up --nodes 2`)")
        alive = local_cluster.alive_nodes(c)
        print(f"cluster: {c.address}, job server {c.dashboard}, {len(alive)} of {len(c.nodes)} node(s) alive")
        for n in alive:
            print(f"  {n.node_name:<14} {n.node_id}  {n.node_ip}")


def _split(argv: list[str], ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    args, rest = ap.parse_known_args(argv)
    flags = [a for a in rest if a.startswith("-")]
    if flags:
        ap.error(f"unknown option(s): {' '.join(flags)}")
    return args, rest


def submit_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        prog="baton submit", usage="baton submit [train|sft|rm|run-default] [options] [key=value ...]",
        description="Run a Baton command as a Ray Job; the config is validated here first.")
    ap.add_argument("--address", default=None, help=f"job server (default: the local cluster, or {jobs.DEFAULT_ADDRESS})")
    ap.add_argument("--follow", action="store_true", help="stream the log until the job ends; exit with its status")
    ap.add_argument("--timeout", type=float, default=7 * 24 * 3600.0, help="--follow gives up after this many s")
    ap.add_argument("--env", action="append", default=[], metavar="K[=V]", help="env var for the job (repeatable)")
    ap.add_argument("--working-dir", type=Path, default=Path.cwd(), help="uploaded as the job's code (default: .)")
    ap.add_argument("--job-id", default=None, help="submission id (default: Ray picks one)")
    command = "train"
    if argv and argv[0] in jobs.COMMANDS:
        command, argv = argv[0], argv[1:]
    args, overrides = _split(argv, ap)
    address = args.address or jobs.default_address()
    sys.exit(jobs.submit(command, overrides, address=address, env=jobs.parse_env(args.env),
                         working_dir=args.working_dir.absolute(), follow=args.follow,
                         follow_timeout_s=args.timeout, submission_id=args.job_id))


def jobs_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="baton jobs", description="Ray Jobs on the cluster.")
    ap.add_argument("--address", default=None)
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    for name in ("status", "logs", "stop"):
        p = sub.add_parser(name)
        p.add_argument("job_id")
        if name == "logs":
            p.add_argument("--follow", action="store_true")
            p.add_argument("--timeout", type=float, default=7 * 24 * 3600.0)
        if name == "stop":
            p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the job to end")
    args = ap.parse_args(argv)
    c = jobs.client(args.address or jobs.default_address())
    if args.action == "list":
        rows = sorted(c.list_jobs(), key=lambda j: j.start_time or 0)
        print(f"{'job':<28} {'status':<10} entrypoint")
        for j in rows:
            print(f"{(j.submission_id or j.job_id or '-'):<28} {str(j.status.value):<10} {j.entrypoint[:90]}")
    elif args.action == "status":
        info = c.get_job_info(args.job_id)
        print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    elif args.action == "logs":
        if args.follow:
            sys.exit(jobs.follow_job(c, args.job_id, args.timeout))
        print(c.get_job_logs(args.job_id), end="")
    else:
        status = jobs.stop_job(c, args.job_id, args.wait)
        print(f"{args.job_id}: {status}")
        if status not in jobs.TERMINAL:
            sys.exit(f"baton: job {args.job_id} still {status} {args.wait:.0f}s after the stop request")
