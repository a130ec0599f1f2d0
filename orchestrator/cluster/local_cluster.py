"""`baton cluster up --nodes N` / `baton cluster down`: a real multi-node Ray cluster on this one machine.

Each node is its own `ray start` (own raylet, object store, CPUs and dashboard agent), all bound to
127.0.0.1, so worker groups, job submission and node failures behave as on a cluster of machines,
which is what tests and demos need. The cluster's state (addresses, each node's processes) lives in
one directory, so `down` stops exactly this cluster and never another Ray on the machine, which
`ray stop` would.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

STATE_FILE = "cluster.json"


def default_dir() -> Path:
    """Short on purpose: Ray's Unix sockets live under it and their paths are limited to ~107 bytes."""
    return Path(os.environ.get("BATON_CLUSTER_DIR", f"/tmp/baton-cluster-{os.getuid()}"))


@dataclass
class NodeRecord:
    index: int
    name: str
    num_cpus: int
    pids: list[int] = field(default_factory=list)


@dataclass
class LocalCluster:
    directory: str
    address: str  # GCS, what `ray.init(address=...)` and `cluster.address` take
    dashboard: str  # http address of the job server, what `baton submit --address` takes
    nodes: list[NodeRecord] = field(default_factory=list)

    def node_temp_dir(self, index: int) -> Path:
        """Each node's own Ray temp dir, as each machine of a real cluster has its own disk. Sharing one made
        two nodes unpack a job's working dir into the same place while its driver imported from it."""
        return Path(self.directory) / f"node{index}"

    @property
    def processes_root(self) -> Path:
        """Every process of this cluster names a path below it on its command line."""
        return Path(self.directory)

    def save(self) -> None:
        path = Path(self.directory) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @staticmethod
    def load(directory: Path | None = None) -> "LocalCluster | None":
        path = (directory or default_dir()) / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        data["nodes"] = [NodeRecord(**n) for n in data["nodes"]]
        return LocalCluster(**data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    # A cluster runs the code each job uploads (its working dir), as a cluster of other machines would:
    # this shell's PYTHONPATH would put a second copy of the packages beside it.
    env.pop("PYTHONPATH", None)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
    # a job's `python -m orchestrator.cli ...` finds this interpreter (the venv Baton is installed in)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def _cluster_pids(root: Path) -> set[int]:
    """Every process of this cluster: each one's command line names a path below the cluster's directory."""
    needle = f"{root}/"
    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(needle in part for part in p.info["cmdline"] or ()):
                found.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _ray_start(args: list[str], timeout_s: float) -> None:
    cmd = [sys.executable, "-m", "orchestrator.cluster.loopback_ray_start", *args]
    done = subprocess.run(cmd, env=_ray_env(), capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"`ray start {' '.join(args)}` failed (exit {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")


def _node_args(index: int, num_cpus: int, object_store_bytes: int) -> list[str]:
    """Ports a second node on the same machine would otherwise collide on, chosen free."""
    return ["--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
            f"--object-store-memory={object_store_bytes}", f"--node-name=baton-node-{index}",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats"]


def up(nodes: int, cpus_per_node: int = 1, object_store_bytes: int = 256 << 20, directory: Path | None = None,
       timeout_s: float = 120.0) -> LocalCluster:
    """Start a head and `nodes - 1` worker nodes; returns once every node has registered."""
    if nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {nodes}")
    directory = (directory or default_dir()).absolute()
    existing = LocalCluster.load(directory)
    if existing is not None and _cluster_pids(existing.processes_root):
        raise RuntimeError(f"a Baton cluster is already running from {directory} (address {existing.address}); "
                           "`baton cluster down` stops it")
    directory.mkdir(parents=True, exist_ok=True)
    gcs_port, dash_port = free_port(), free_port()
    cluster = LocalCluster(directory=str(directory), address=f"127.0.0.1:{gcs_port}",
                           dashboard=f"http://127.0.0.1:{dash_port}")
    try:
        for i in range(nodes):
            before = _cluster_pids(cluster.processes_root)
            if i == 0:
                args = ["--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dash_port}", f"--ray-client-server-port={free_port()}",
                        f"--temp-dir={cluster.node_temp_dir(0)}"]
            else:
                args = [f"--address={cluster.address}", f"--temp-dir={cluster.node_temp_dir(i)}"]
            _ray_start(args + _node_args(i, cpus_per_node, object_store_bytes), timeout_s)
            time.sleep(0.5)  # the node's agents are forked by its raylet right after `ray start` returns
            cluster.nodes.append(NodeRecord(i, f"baton-node-{i}", cpus_per_node,
                                            sorted(_cluster_pids(cluster.processes_root) - before)))
            cluster.save()
        wait_for_nodes(cluster, nodes, timeout_s)
    except BaseException:
        down(directory)
        raise
    return cluster


def alive_nodes(cluster: LocalCluster) -> list:
    """Ray's NodeState records of the live nodes (node_id, node_name, node_ip, resources_total)."""
    from ray.util.state import list_nodes

    return [n for n in list_nodes(address=cluster.dashboard, timeout=10, raise_on_missing_output=False)
            if n.state == "ALIVE"]


def wait_for_nodes(cluster: LocalCluster, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        try:
            seen = len(alive_nodes(cluster))
        except Exception:  # noqa: BLE001 - the dashboard is still starting
            seen = 0
        if seen >= count:
            return
        time.sleep(1.0)
    raise TimeoutError(f"local cluster: {seen} of {count} nodes registered within {timeout_s:.0f}s "
                       f"(logs: {cluster.node_temp_dir(0)}/session_latest/logs)")


def _with_children(pids: list[int] | set[int]) -> list[psutil.Process]:
    """The processes and all their descendants (agents and workers are children of a raylet)."""
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs.extend([p, *p.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    return procs


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _terminate(pids: list[int], grace_s: float = 5.0) -> None:
    procs = _with_children(pids)
    _signal_all(procs, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    _signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace_s)


def kill_node(index: int, directory: Path | None = None) -> NodeRecord:
    """As if the machine died (or `ray stop --force` ran on it): the node's raylet, agents and workers are SIGKILLed."""
    cluster = LocalCluster.load(directory)
    if cluster is None:
        raise RuntimeError(f"no Baton cluster in {directory or default_dir()}")
    node = cluster.nodes[index]
    # a recorded pid may belong to someone else by now: only this cluster's processes qualify
    _signal_all(_with_children(set(node.pids) & _cluster_pids(cluster.processes_root)), signal.SIGKILL)
    return node


def down(directory: Path | None = None) -> int:
    """Stop every process of the cluster in `directory`; returns how many there were."""
    directory = (directory or default_dir()).absolute()
    cluster = LocalCluster.load(directory)
    pids = sorted(_cluster_pids(directory))
    _terminate(pids)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return len(pids)
