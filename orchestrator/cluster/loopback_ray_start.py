"""`ray start` that keeps a node on 127.0.0.1 when it is asked to, also when it joins a head.

Ray offers two settings and neither fits a multi-node cluster on one machine. With
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 every socket stays on loopback but `ray start --address`
refuses to join; with =1 it joins, but rewrites `--node-ip-address=127.0.0.1` to the machine's
outward address (`services.resolve_ip_for_localhost`), so GCS, raylets and the dashboard agent
listen on every interface, and the node's own processes dial that address. Here the `ray start`
process alone may join, an explicit loopback address is kept, and the processes it starts inherit =0.

Run as `python -m orchestrator.cluster.loopback_ray_start <ray start args>`.
"""
from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    # The node's own processes (agents, workers, job drivers) keep resolving localhost to 127.0.0.1 ...
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants, services
    from ray.scripts import scripts

    ray_constants.ENABLE_RAY_CLUSTER = True  # ... while this process may join a head

    asked_loopback = any(a in ("--node-ip-address=127.0.0.1",) for a in argv)
    if asked_loopback:
        original = services.resolve_ip_for_localhost
        services.resolve_ip_for_localhost = lambda host: host if host == "127.0.0.1" else original(host)
    scripts.cli.main(args=["start", *argv], prog_name="ray", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
