"""The Ray actor that lives on one bundle: initialises torch.distributed and hosts one or more roles.

Several roles in one host share the process (and so the device and the process group):
that is colocation. The driver addresses each role through its own WorkerGroup.
"""
from __future__ import annotations

import os
import socket
import traceback
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from workers.runtime.worker import WorkerContext


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class WorkerHost:
    """Plain class; `worker_group` wraps it with `ray.remote` and a placement-group strategy."""

    def __init__(self, rank: int, world_size: int, local_rank: int, use_gpu: bool, env: dict[str, str]):
        os.environ.update(env)
        self.rank, self.world_size, self.local_rank, self.use_gpu = rank, world_size, local_rank, use_gpu
        self.roles: dict[str, Any] = {}

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the rendezvous (called on rank 0 only)."""
        return ray_node_ip(), _free_port()

    def pid(self) -> int:
        return os.getpid()

    def init_distributed(self, master_addr: str, master_port: int, timeout_s: float) -> None:
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(self.local_rank),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        backend = "nccl" if self.use_gpu else "gloo"
        if self.use_gpu:
            torch.cuda.set_device(0)  # Ray exposes exactly the bundle's GPU as device 0
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                rank=self.rank,
                world_size=self.world_size,
                timeout=timedelta(seconds=timeout_s),
            )

    def context(self, role: str) -> WorkerContext:
        device = torch.device("cuda", 0) if self.use_gpu else torch.device("cpu")
        backend = "nccl" if self.use_gpu else "gloo"
        return WorkerContext(role, self.rank, self.world_size, self.local_rank, device, backend)

    def add_role(self, role: str, cls: type, kwargs: dict) -> None:
        self.roles[role] = cls(self.context(role), **kwargs)

    def call(self, role: str, method: str, args: tuple, kwargs: dict) -> Any:
        try:
            return getattr(self.roles[role], method)(*args, **kwargs)
        except Exception as e:  # keep the worker-side traceback in the driver's message
            raise RemoteFailure(f"{type(e).__name__}: {e}\n{traceback.format_exc()}") from None


class RemoteFailure(RuntimeError):
    """Carries a worker's exception text and traceback to the driver as a picklable error."""


def ray_node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()
