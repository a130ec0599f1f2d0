"""Multi-controller runtime: resource pools, worker hosts, worker groups and dispatch modes."""
from workers.runtime.dispatch import Dispatch, register
from workers.runtime.errors import ClusterShrunk, WorkerError, WorkerTimeout
from workers.runtime.resource_pool import ResourcePool
from workers.runtime.worker import Worker, WorkerContext
from workers.runtime.worker_group import PendingCall, WorkerGroup, spawn_colocated

__all__ = [
    "Dispatch",
    "register",
    "ClusterShrunk",
    "WorkerError",
    "WorkerTimeout",
    "ResourcePool",
    "Worker",
    "WorkerContext",
    "PendingCall",
    "WorkerGroup",
    "spawn_colocated",
]
