"""Gather the weights once for a pass over several micro-batches, and reduce the gradients once.

By default FSDP2 all-gathers each layer's weights for every forward (again for backward when it
reshards after forward) and reduce-scatters the gradients after every backward. With padding
removed and a token budget, a mini-batch becomes many small length-sorted micro-batches, and those
per-micro-batch collectives can cost more than the padding they save (the default job on 2 CPU
ranks over gloo was slower with a 512-token budget than without: BENCHMARKS.md, `bench padding`).
Here the weights stay gathered for the whole pass and gradients accumulate unsharded until the
last micro-batch, whose backward reduce-scatters their sum, using FSDP2's own switches
(set_reshard_after_forward/backward, set_requires_gradient_sync).

Cost: while the pass runs each rank holds the full weights (in the compute dtype) and, in
training, full-size gradients; `model.fsdp_gather_once=false` keeps ZeRO-3 memory instead.
Results are the same up to float summation order (a sum of micro-batch gradients reduced once
instead of reduced per micro-batch).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.distributed.fsdp import FSDPModule


def _fsdp_modules(module: nn.Module) -> list[FSDPModule]:
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextmanager
def weights_gathered(module: nn.Module, *, enabled: bool, reshard_after_forward: bool) -> Iterator[None]:
    """Inside: forwards and backwards keep every layer's weights gathered; on exit all are resharded."""
    if not enabled:
        yield
        return
    modules = _fsdp_modules(module)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.set_reshard_after_backward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.set_reshard_after_forward(reshard_after_forward, recurse=False)
            m.set_reshard_after_backward(True, recurse=False)
            m.reshard()


def sync_gradients_on(module: nn.Module, last: bool, *, enabled: bool) -> None:
    """Before a micro-batch's backward: reduce-scatter only on the last one (always, when not `enabled`)."""
    if enabled and isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(last)
