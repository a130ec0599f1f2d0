"""The Ray actor that lives on one bundle: initialises torch.distributed and hosts one or more roles.

Several roles in one host share the process (and so the device and the process group):
that is colocation. The driver addresses each role through its own WorkerGroup.
"""
from __future__ import annotations

import os
import traceback
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hybrid_engine import open_sync_store
from workers.runtime.worker import WorkerContext


class WorkerHost:
    """Plain class; `worker_group` wraps it with `ray.remote` and a placement-group strategy."""

    def __init__(self, rank: int, world_size: int, local_rank: int, use_gpu: bool, env: dict[str, str]):
        os.environ.update(env)
        os.environ.update(bind_to_interface_env(ray_node_ip()))  # before any gloo/NCCL group exists
        self.rank, self.world_size, self.local_rank, self.use_gpu = rank, world_size, local_rank, use_gpu
        self.roles: dict[str, Any] = {}
        self._store: dist.TCPStore | None = None

    def address(self) -> tuple[str, int]:
        """Open the rendezvous store on this node's Ray address (rank 0 only); where the others find it."""
        host = ray_node_ip()
        self._store, port = open_sync_store(host, timeout_s=600.0, world_size=self.world_size)
        return host, port

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> dict[str, str]:
        """Which Ray node this rank runs on: errors and the run's placement record name it."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray_node_ip(), "pid": str(os.getpid())}

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
            timeout = timedelta(seconds=timeout_s)
            if self._store is None:
                self._store = dist.TCPStore(master_addr, master_port, self.world_size, is_master=False, timeout=timeout)
            dist.init_process_group(backend=backend, store=self._store, rank=self.rank, world_size=self.world_size,
                                    timeout=timeout)

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


def bind_to_interface_env(ip: str) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME naming the interface that holds `ip`, where one does.

    Gloo otherwise binds the address the machine's hostname resolves to, and NCCL picks its own
    interface; pinning both to the interface of the address Ray uses keeps every collective on
    it (127.0.0.1 -> lo on a local cluster). A value set by the user is kept.
    """
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addrs):
            return {k: os.environ.get(k, name) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    return {}
