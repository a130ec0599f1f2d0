"""A process group of its own for weight sync between two pools (trainer rank 0 + rollout workers).

Why not the default group: each pool's default group is its own training or data-parallel
world, and `dist.new_group` can only pick members of one default world. So this group is
built straight from a TCPStore that the sending rank hosts: a c10d backend object (gloo on
CPU, NCCL on GPU) that is never registered as a default or named group, so FSDP's
collectives and the weight broadcasts can never mix up their order.

Every collective here waits with the group's timeout: a peer that never shows up (or died)
surfaces as an error on the ranks still waiting, never as a hang.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

STORE_PREFIX = "baton-weight-sync"


def open_sync_store(host: str, timeout_s: float, world_size: int | None = None) -> tuple[dist.TCPStore, int]:
    """Host a rendezvous store listening on `host` only (this node's address); returns it and its port.

    torch's TCPStore binds every interface when it opens its own socket, so the socket is made
    here, bound to `host` on a port the OS picks (no other process can take it in between),
    and handed over as `master_listen_fd`.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(128)
        port = sock.getsockname()[1]
    except OSError:
        sock.close()
        raise
    store = dist.TCPStore(host, port, world_size, is_master=True, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=sock.detach())
    return store, port


def connect_sync_store(host: str, port: int, timeout_s: float) -> dist.TCPStore:
    return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))


@dataclass
class SyncGroup:
    """One member's handle on the weight-sync group. Rank 0 is the sender."""

    backend: Any  # a c10d Backend (ProcessGroupGloo / ProcessGroupNCCL)
    rank: int
    world_size: int
    device: torch.device
    timeout: timedelta
    store: dist.Store  # kept alive: the sender hosts it for the group's lifetime

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        """In place on every member; returns once this rank's part is done (or raises on timeout)."""
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor, opts.timeout = src, 0, self.timeout
        self.backend.broadcast([tensor], opts).wait(self.timeout)

    def barrier(self) -> None:
        """Returns only once every member has reached it (an all-reduce of one element)."""
        flag = torch.ones(1, device=self.device)
        opts = dist.AllreduceOptions()
        opts.timeout = self.timeout
        self.backend.allreduce([flag], opts).wait(self.timeout)
        if int(flag.item()) != self.world_size:
            raise RuntimeError(f"weight-sync barrier: {int(flag.item())} of {self.world_size} members answered")


def join_sync_group(store: dist.Store, *, rank: int, world_size: int, device: torch.device,
                    timeout_s: float) -> SyncGroup:
    """Collective over the group: every member calls it at about the same time (it rendezvouses).

    The backend follows the device, as the training group's does: NCCL for CUDA, gloo otherwise.
    """
    timeout = timedelta(seconds=timeout_s)
    prefixed = dist.PrefixStore(STORE_PREFIX, store)
    device = torch.device(device)
    if device.type == "cuda":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        backend = dist.ProcessGroupNCCL(prefixed, rank, world_size, opts)
    else:
        backend = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    group = SyncGroup(backend, rank, world_size, device, timeout, store)
    group.barrier()  # NCCL connects lazily: make the first collective here, where a failure says what it is
    return group
