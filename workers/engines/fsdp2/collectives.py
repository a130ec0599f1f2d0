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
from workers.engines.micro_batches import agree_on_count, plan_family_rows, plan_rows, row_lengths, split_to_count
from workers.engines.prompt_sharing import prompt_families, row_spans


def split_micro_batches(
    batch: Batch, micro_batch_size: int, group: ProcessGroup | None, device: torch.device, *,
    max_tokens: int | None = None, by_length: bool = False, share_prompts: bool = False,
    max_row_tokens: int | None = None, packed: bool = False,
) -> list[tuple[Tensor, Batch]]:
    """(row indices, rows) of each micro-batch (workers/engines/micro_batches.py), the same count on every rank.

    share_prompts: plan family by family (workers/engines/prompt_sharing.py), budgets in packed cells;
    rows not in the rollout layout fall back to the length plan.
    packed: a micro-batch runs as one varlen sequence (workers/engines/varlen.py): budgets count tokens, not cells.
    Without a token budget the count follows from the rows alone, so ranks that disagree were given
    different rows: an error, not a hang. With one, ranks split micro-batches up to the group's largest count.
    """
    if len(batch) == 0:
        raise ValueError("empty batch: every data-parallel rank got 0 rows")
    # a row costs its attended tokens once padding is removed (by_length), the full width otherwise
    width = batch["attention_mask"].shape[1] if "attention_mask" in batch else 1
    lengths = row_lengths(batch["attention_mask"]) if by_length else torch.full((len(batch),), width)
    plans = _family_plan(batch, micro_batch_size, max_tokens, max_row_tokens, packed) if share_prompts else None
    if plans is None:
        plans = plan_rows(lengths, micro_batch_size, max_tokens, sort=by_length, packed=packed and by_length)
    if max_tokens is not None:
        plans = split_to_count(plans, agree_on_count(len(plans), group, device))
    else:
        n = torch.tensor([len(plans), -len(plans)], dtype=torch.int64, device=device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX, group=group)
        most, fewest = int(n[0]), -int(n[1])
        if most != fewest:
            raise RuntimeError(
                f"data-parallel ranks disagree on the number of micro-batches ({fewest}..{most}); "
                f"this rank has {len(batch)} rows at micro_batch_size={micro_batch_size}: give every rank the same rows"
            )
    return [(rows, batch.index(rows)) for rows in plans]


def _family_plan(batch: Batch, micro_batch_size: int, max_tokens: int | None,
                 max_row_tokens: int | None, packed: bool) -> list[Tensor] | None:
    prompt_width = batch["input_ids"].shape[1] - batch["responses"].shape[1]
    spans = row_spans(batch["attention_mask"], prompt_width)
    if spans is None:
        return None
    start, responses = spans
    families = prompt_families(batch["input_ids"], batch["attention_mask"], batch["position_ids"], prompt_width)
    return plan_family_rows(families, prompt_width - start, responses, micro_batch_size, max_tokens, max_row_tokens,
                            packed)


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
