"""Errors that reach the driver from a worker group, always naming role and rank."""
from __future__ import annotations


class WorkerError(RuntimeError):
    """A worker raised, or its process died, during a call."""

    def __init__(self, role: str, rank: int, method: str, cause: str, *, process_died: bool = False,
                 node: dict[str, str] | None = None, node_lost: bool = False):
        self.role, self.rank, self.method, self.cause = role, rank, method, cause
        self.process_died = process_died  # the process is gone (killed, OOM, node lost), not a Python error
        self.node, self.node_lost = node, node_lost  # node_lost: its whole Ray node left the cluster
        where = f" on node {node['node_id']} ({node['ip']})" if node else ""
        lost = "; that node has left the Ray cluster" if node_lost else ""
        super().__init__(f"{role} rank {rank}{where} failed in {method}(): {cause}{lost}")


class WorkerTimeout(TimeoutError):
    """A call did not finish in its time budget; names the ranks still running."""

    def __init__(self, role: str, method: str, pending_ranks: list[int], timeout_s: float):
        self.role, self.method, self.pending_ranks = role, method, pending_ranks
        super().__init__(
            f"{role}.{method}() did not finish within {timeout_s:.0f}s; "
            f"still running on rank(s) {pending_ranks}"
        )


class ClusterShrunk(RuntimeError):
    """The Ray cluster has fewer live nodes than a resource pool needs: waiting for placement would be in vain."""
