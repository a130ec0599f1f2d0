"""The few collectives the engine needs beyond FSDP's own: counts, metrics, the global grad norm.

Every rank of an FSDP group must run the same number of forwards (each one all-gathers
parameters); `split_micro_batches` checks that up front so a mismatch is an error, not a hang.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed import ProcessGroup
from torch.distributed.tensor import DTensor, Shard

from workers.batch import Batch


def split_micro_batches(
    batch: Batch, micro_batch_size: int, group: ProcessGroup | None, device: torch.device
) -> list[Batch]:
    """Consecutive micro-batches; raises if ranks would run different numbers of forwards."""
    micro = batch.split_by_size(micro_batch_size)
    n = torch.tensor([len(micro), -len(micro)], dtype=torch.int64, device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX, group=group)
    most, fewest = int(n[0]), -int(n[1])
    if most != fewest:
        raise RuntimeError(
            f"data-parallel ranks disagree on the number of micro-batches ({fewest}..{most}); "
            f"this rank has {len(batch)} rows at micro_batch_size={micro_batch_size}: give every rank the same rows"
        )
    if not micro:
        raise ValueError("empty batch: every data-parallel rank got 0 rows")
    return micro


def all_reduce_sum(values: Tensor, group: ProcessGroup | None) -> Tensor:
    """Sum a small vector over the group (returns a new tensor)."""
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def _local_grad(param: nn.Parameter) -> Tensor:
    grad = param.grad
    if isinstance(grad, DTensor):
        if not all(isinstance(p, Shard) for p in grad.placements):
            raise ValueError(f"global grad norm assumes sharded (not replicated) grads, got {grad.placements}")
        return grad.to_local()
    raise TypeError("expected DTensor gradients from fully_shard")


def global_grad_norm(params: Iterable[nn.Parameter], group: ProcessGroup | None, device: torch.device) -> Tensor:
    """L2 norm of the whole (unsharded) gradient: local shard sums of squares, summed over ranks.

    Each rank holds a disjoint shard of every gradient, so the squared norms add up exactly;
    a local-only norm would differ per rank and make ranks clip differently.
    """
    squares = [torch.linalg.vector_norm(_local_grad(p), dtype=torch.float32).square() for p in params if p.grad is not None]
    total = torch.stack(squares).sum().to(device) if squares else torch.zeros((), dtype=torch.float32, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total.sqrt()


@torch.no_grad()
def local_param_square_sum(params: Iterable[nn.Parameter], device: torch.device) -> Tensor:
    """Sum of squares of this rank's weight shards (disjoint across ranks: their all-reduce is the global one).

    In float64, so weights that are huge but finite (a diverging run) give a finite norm instead of an
    overflow that would look like inf weights (a float32 sum of squares overflows at a norm of ~1.8e19).
    """
    local = [p.to_local() if isinstance(p, DTensor) else p for p in params]
    squares = [torch.linalg.vector_norm(t, dtype=torch.float64).square() for t in local]
    return torch.stack(squares).sum().to(device) if squares else torch.zeros((), dtype=torch.float64, device=device)


@torch.no_grad()
def clip_grads_(params: Iterable[nn.Parameter], max_norm: float, total_norm: Tensor) -> None:
    """Scale every gradient by min(1, max_norm / total_norm) (same factor on every rank)."""
    coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad is not None:
            local = _local_grad(p)
            local.mul_(coef.to(local.device))
