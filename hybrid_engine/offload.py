"""Offload a training module's parameters, gradients and optimizer state to host memory and back.

What is moved: the storages behind this rank's parameter shards (FSDP2 DTensor local
shards after a reshard), behind the gradients, behind every tensor in the optimizer
state (AdamW exp_avg / exp_avg_sq, and `step` when it lives on the device, i.e. with
fused/capturable AdamW; the default `step` is a CPU scalar and stays put) and behind
fp32 master weights an optimizer keeps apart from the module's (with the optimizer state). Buffers
(e.g. rotary `inv_freq`) are not moved: they are small and often recomputed.

On a CPU training device, the training state already is host memory: the offloader
built by `for_device` moves nothing and its reports say so with 0 bytes. The mechanism
itself (`release_storage=True`) works on any device, CPU included; the tests use that to
exercise real freeing and refilling of FSDP2 state on CPU.

While something is offloaded, guards turn the usual accidents into exceptions instead
of reads of freed memory: a forward pass of the module (params offloaded, or grads
offloaded with autograd on, since backward would accumulate into them) and
`optimizer.step()`. Other access (`state_dict()`, `zero_grad(set_to_none=False)`) is
not guarded: checkpoint in TRAIN mode.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hybrid_engine.fsdp import fsdp_modules, local_tensor, reshard_fsdp_modules
from hybrid_engine.memory import moves_to_host, resolve_device
from hybrid_engine.storage_stash import HostBufferPool, StorageStash

CPU_NOTE = "training device is the CPU: its state already lives in host memory, so nothing was moved"


class OffloadedStateError(RuntimeError):
    """Training state was used while offloaded to host memory (call the hybrid engine's train_mode())."""


@dataclass(frozen=True)
class OffloadReport:
    """One offload or reload: what, how many bytes and storages, how long, and why nothing moved if so."""

    what: str  # "params" or "optimizer" (state + grads)
    direction: str  # "offload" or "reload"
    bytes_moved: int
    storages: int
    seconds: float
    note: str  # empty when bytes moved as expected


@torch.no_grad()
def param_tensors(module: nn.Module) -> list[torch.Tensor]:
    """This rank's parameter memory, after resharding FSDP2 modules so no full copies remain."""
    reshard_fsdp_modules(module)
    return [local_tensor(p) for p in module.parameters()]


@torch.no_grad()
def grad_tensors(module: nn.Module) -> list[torch.Tensor]:
    """This rank's gradient memory (gradients that are None are skipped)."""
    return [local_tensor(p.grad) for p in module.parameters() if p.grad is not None]


@torch.no_grad()
def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor in the optimizer's per-parameter state, as local shards."""
    out: list[torch.Tensor] = []
    for state in optimizer.state.values():
        out.extend(local_tensor(v) for v in state.values() if isinstance(v, torch.Tensor))
    return out


@torch.no_grad()
def master_weight_tensors(optimizer: torch.optim.Optimizer, module: nn.Module) -> list[torch.Tensor]:
    """Parameters the optimizer steps that are not the module's own: fp32 master copies of low-precision
    weights (the Megatron engine keeps them; FSDP2's optimizer steps the module's shards directly)."""
    own = {id(p) for p in module.parameters()}
    return [local_tensor(p) for group in optimizer.param_groups for p in group["params"] if id(p) not in own]


class TrainingStateOffloader:
    """Offloads/reloads a module's params and its optimizer (state + grads), each independently.

    Offloading what is already offloaded, or reloading what is resident, is a 0-byte no-op
    with a note, so a switch that failed half-way can simply be retried.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        device: torch.device,
        release_storage: bool,
        pin_memory: bool,
    ) -> None:
        """`device`: only tensors on it are moved. `release_storage=False` makes every call a no-op."""
        self.module = module
        self.optimizer = optimizer
        self.device = resolve_device(device)
        self.release_storage = release_storage
        pool = HostBufferPool(pin_memory=pin_memory)
        self._params = StorageStash(pool)
        self._optim = StorageStash(pool)
        self.pool = pool
        self._guards: dict[str, list[RemovableHandle]] = {}

    @classmethod
    def for_device(
        cls, module: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device
    ) -> "TrainingStateOffloader":
        """Move only when `device` is not the host; pin host buffers on CUDA (async, faster copies)."""
        device = resolve_device(device)
        return cls(
            module, optimizer, device=device, release_storage=moves_to_host(device), pin_memory=device.type == "cuda"
        )

    @property
    def params_offloaded(self) -> bool:
        return self._params.is_stashed

    @property
    def optimizer_offloaded(self) -> bool:
        return self._optim.is_stashed

    def offload_params(self) -> OffloadReport:
        return self._move("params", "offload", self._params, lambda: param_tensors(self.module))

    def reload_params(self) -> OffloadReport:
        return self._move("params", "reload", self._params, None)

    def offload_optimizer(self) -> OffloadReport:
        """Optimizer state and gradients (both only needed by the next backward/step)."""

        def tensors() -> list[torch.Tensor]:
            found = grad_tensors(self.module)
            if self.optimizer is not None:
                found += optimizer_state_tensors(self.optimizer) + master_weight_tensors(self.optimizer, self.module)
            return found

        return self._move("optimizer", "offload", self._optim, tensors)

    def reload_optimizer(self) -> OffloadReport:
        return self._move("optimizer", "reload", self._optim, None)

    def _move(
        self,
        what: str,
        direction: str,
        stash: StorageStash,
        tensors: Callable[[], list[torch.Tensor]] | None,
    ) -> OffloadReport:
        start = time.perf_counter()
        if not self.release_storage:
            return OffloadReport(what, direction, 0, 0, time.perf_counter() - start, CPU_NOTE)
        if direction == "reload":
            self._remove_guard(what)
        if (direction == "offload") == stash.is_stashed:
            note = f"{what} already {'offloaded' if stash.is_stashed else 'resident'}"
            return OffloadReport(what, direction, 0, 0, time.perf_counter() - start, note)
        if tensors is None:
            moved, count = stash.restore()
            return OffloadReport(what, direction, moved, count, time.perf_counter() - start, "")
        moved, count = stash.stash(t for t in tensors() if t.device == self.device)
        if count:
            self._install_guard(what)
        note = "" if count else f"no {what} tensors on {self.device} (e.g. before the first step)"
        return OffloadReport(what, direction, moved, count, time.perf_counter() - start, note)

    def _install_guard(self, what: str) -> None:
        handles: list[RemovableHandle] = []

        def forward_guard(module: nn.Module, args: tuple[Any, ...]) -> None:
            if what == "params" or torch.is_grad_enabled():
                raise OffloadedStateError(
                    f"{type(module).__name__}.forward while its {what} are offloaded to host memory "
                    "(hybrid engine in ROLLOUT mode); call train_mode() first"
                )

        # prepend: run before FSDP2's pre-forward hook, whose all-gather would read freed shards.
        for sub in fsdp_modules(self.module):
            handles.append(sub.register_forward_pre_hook(forward_guard, prepend=True))
        if what == "optimizer" and self.optimizer is not None:

            def step_guard(optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                raise OffloadedStateError(
                    "optimizer.step() while the optimizer state is offloaded to host memory; call train_mode() first"
                )

            handles.append(self.optimizer.register_step_pre_hook(step_guard))
        self._guards[what] = handles

    def _remove_guard(self, what: str) -> None:
        for handle in self._guards.pop(what, []):
            handle.remove()
