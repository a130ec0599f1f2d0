"""A torch.distributed world of its own for an in-process vLLM engine.

An in-process vLLM (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) finds torch.distributed already
initialised by the worker runtime and builds its groups on that world: its "world" group then
spans every training rank ("rank 0 in world size 2" in its log) and its group set-up runs
collectives across ranks whose FSDP2 collectives share the same world. Rollout never needs
other ranks (each rank runs its own tensor-parallel-1 engine), so vLLM gets a world of one:
while vLLM code runs, the process's default group is a private single-rank gloo group, and
every group vLLM creates is built on it. Outside those calls the training world is the
default again, untouched. The switch is two attribute writes; a Ray actor runs one call at
a time and the in-process engine starts no threads that use torch.distributed.

This reaches into torch.distributed's registry (`distributed_c10d._world`), which is private
API: `private_world` checks what it relies on and fails loudly, never silently, if a torch
version moves it.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

GROUP_NAME = "baton_vllm_world"
_TIMEOUT = timedelta(minutes=30)
_private: dist.ProcessGroup | None = None


def _build_private_world() -> dist.ProcessGroup:
    store = dist.PrefixStore(f"{GROUP_NAME}/", dist.HashStore())
    pg = c10d.ProcessGroup(store, 0, 1)
    backend = dist.ProcessGroupGloo(store, 0, 1, _TIMEOUT)
    gloo = c10d.ProcessGroup.BackendType.GLOO
    pg._set_default_backend(gloo)
    pg._register_backend(torch.device("cpu"), gloo, backend)
    pg._set_group_name(GROUP_NAME)
    world = c10d._world
    world.pg_map[pg] = ("gloo", store)
    world.pg_names[pg] = GROUP_NAME
    world.pg_group_ranks[pg] = {0: 0}
    world.pg_backend_config[pg] = "cpu:gloo"
    return pg


@contextmanager
def private_world() -> Iterator[None]:
    """Within the block, torch.distributed's default world is vLLM's private one (if a training world exists)."""
    global _private
    if not dist.is_initialized():
        yield  # no training world in this process: vLLM may create the default world itself
        return
    world = c10d._world
    if not hasattr(world, "default_pg") or not hasattr(world, "pg_map"):
        raise RuntimeError("vllm rollout: this torch's distributed_c10d has no _world.default_pg/pg_map; "
                           "Baton cannot give vLLM a world of its own (see workers/rollout/vllm_world.py)")
    training = world.default_pg
    if training is _private and _private is not None:
        yield  # already inside
        return
    if _private is None:
        _private = _build_private_world()
    world.default_pg = _private
    try:
        yield
    finally:
        world.default_pg = training


class WorldScoped:
    """Wraps an object (vLLM's `LLM`) so that each of its method calls runs in the private world."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with private_world():
                return value(*args, **kwargs)

        return call
