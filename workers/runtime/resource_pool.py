"""Resource pools: one STRICT_PACK placement group per node, one bundle per device or CPU slot.

Roles that share a pool are colocated (one host actor per bundle), which is what lets actor,
rollout and reference share one GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group


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
        """Reserve the bundles; fails with the pool name if the cluster cannot fit them in time."""
        if self.placement_groups:
            return self
        for node in range(self.nnodes):
            pg = placement_group(
                [self.bundle() for _ in range(self.devices_per_node)],
                strategy="STRICT_PACK",
                name=f"baton-{self.name}-node{node}",
            )
            self.placement_groups.append(pg)
        ready = [pg.ready() for pg in self.placement_groups]
        done, _ = ray.wait(ready, num_returns=len(ready), timeout=self.ready_timeout_s)
        if len(done) < len(ready):
            self.release()
            raise RuntimeError(
                f"resource pool '{self.name}': could not reserve {self.nnodes} node(s) x "
                f"{self.devices_per_node} x {self.bundle()} within {self.ready_timeout_s:.0f}s; "
                f"cluster has {ray.cluster_resources()} (check cluster.nnodes / cluster.devices_per_node)"
            )
        return self

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
