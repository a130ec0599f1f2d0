"""Resource pools: one STRICT_PACK placement group per node, one bundle per device or CPU slot.

Roles that share a pool are colocated (one host actor per bundle), which is what lets actor,
rollout and reference share one GPU. With several nodes each node's group goes to a different Ray
node, so `cluster.nnodes` means machines, as a user reads it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group

from workers.runtime.errors import ClusterShrunk

NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries it
_NODE_POLL_S = 1.0


def _require_nodes(pool: str, nnodes: int) -> None:
    nodes = ray.nodes()
    alive = [n for n in nodes if n.get("Alive")]
    if len(alive) < nnodes:
        gone = [f"{n['NodeID']} ({n.get('NodeManagerAddress', '?')})" for n in nodes if not n.get("Alive")]
        raise ClusterShrunk(f"resource pool '{pool}': cluster.nnodes={nnodes} but the Ray cluster has {len(alive)} "
                            "live node(s)" + (f"; gone: {', '.join(gone)}" if gone else ""))


@dataclass
class ResourcePool:
    """`nnodes` x `devices_per_node` bundles; each bundle holds one worker rank."""

    name: str
    nnodes: int
    devices_per_node: int
    use_gpu: bool
    cpus_per_worker: float
    ready_timeout_s: float
    placement_groups: list[PlacementGroup] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.devices_per_node

    def bundle(self) -> dict[str, float]:
        b = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            b["GPU"] = 1
        return b

    def create(self) -> "ResourcePool":
        """Reserve the bundles, one placement group per node, each on a node of its own.

        Fails with the pool name: at once when the cluster has fewer live nodes than the pool needs
        (also when one leaves while waiting), else when the bundles do not fit in time.
        """
        if self.placement_groups:
            return self
        _require_nodes(self.name, self.nnodes)
        deadline = time.monotonic() + self.ready_timeout_s
        used: list[str] = []
        for node in range(self.nnodes):
            # later nodes' groups avoid the nodes already taken: STRICT_PACK alone may stack them on one
            selector = [{NODE_ID_LABEL: f"!in({','.join(used)})"}] * self.devices_per_node if used else None
            pg = placement_group([self.bundle() for _ in range(self.devices_per_node)], strategy="STRICT_PACK",
                                 name=f"baton-{self.name}-node{node}", bundle_label_selector=selector)
            self.placement_groups.append(pg)
            try:
                self._wait_placed(pg, deadline, node)
            except BaseException:
                self.release()
                raise
            used.append(placement_group_table(pg)["bundles_to_node_id"][0])
        return self

    def _wait_placed(self, pg: PlacementGroup, deadline: float, placed: int) -> None:
        """Until `pg` is placed; gives up early when a node leaves, since the pool can then never fit."""
        ready = pg.ready()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"resource pool '{self.name}': could not reserve {self.nnodes} node(s) x {self.devices_per_node}"
                    f" x {self.bundle()} within {self.ready_timeout_s:.0f}s (placed {placed}); cluster has "
                    f"{ray.cluster_resources()} (check cluster.nnodes / cluster.devices_per_node)")
            done, _ = ray.wait([ready], timeout=min(remaining, _NODE_POLL_S))
            if done:
                return
            _require_nodes(self.name, self.nnodes)

    def slots(self) -> list[tuple[PlacementGroup, int, int]]:
        """(placement group, bundle index, local rank) for each global rank, in rank order."""
        return [(pg, i, i) for pg in self.placement_groups for i in range(self.devices_per_node)]

    def release(self) -> None:
        for pg in self.placement_groups:
            try:
                remove_placement_group(pg)
            except Exception:  # already gone with the cluster
                pass
        self.placement_groups = []
