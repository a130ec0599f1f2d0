"""Which rows go into which micro-batch: at most `micro_batch_size` rows and, optionally, at most
`max_tokens` tokens each, rows of similar length together.

A micro-batch costs rows x width, and with padding removed (workers/engines/compaction.py) its
width is its longest row; taking rows in length order keeps the widths tight, and a token budget
lets short rows go many to a micro-batch and long rows few. Neither changes a result: outputs
go back to the rows' order, and the training loss is normalised by global counts, so any split
gives the same loss and gradient (workers/engines/fsdp2/train_step.py).

With prompt sharing (workers/engines/prompt_sharing.py) rows are taken family by family instead,
so a prompt's rows land in the same micro-batch and its prompt is computed once there; the budget
is then counted in packed cells, with the same packing rule the forward uses.

Every rank of a data-parallel group must run the same number of forwards (each all-gathers the
weights). Under a token budget ranks may plan different counts, so all plan the group's largest
count, splitting their own biggest micro-batches until they have as many.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup

from workers.engines.prompt_sharing import FamilyPacker


def row_lengths(attention_mask: Tensor) -> Tensor:
    """Attended tokens per row: the width a row needs once its padding is removed."""
    return (attention_mask > 0).sum(dim=1)


def _check_limits(micro_batch_size: int, max_tokens: int | None) -> None:
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens_per_micro_batch must be >= 1 or null, got {max_tokens}")


def plan_rows(lengths: Tensor, micro_batch_size: int, max_tokens: int | None, *, sort: bool,
              packed: bool = False) -> list[Tensor]:
    """Row indices of each micro-batch: rows in length order (if `sort`), cut when the next row would
    exceed micro_batch_size rows or max_tokens tokens: rows x longest row (the cells a batched forward
    runs), or with `packed` the sum of the lengths (a varlen forward runs no padding). A lone row may
    exceed it."""
    _check_limits(micro_batch_size, max_tokens)
    order = torch.argsort(lengths, descending=True, stable=True) if sort else torch.arange(len(lengths))
    plans: list[list[int]] = []
    widest = total = 0
    for row in order.tolist():
        width = int(lengths[row])
        current = plans[-1] if plans else None
        cost = total + width if packed else (len(current or []) + 1) * max(widest, width)
        fits = current is not None and len(current) < micro_batch_size and (max_tokens is None or cost <= max_tokens)
        if fits:
            current.append(row)
            widest, total = max(widest, width), total + width
        else:
            plans.append([row])
            widest = total = width
    return [torch.tensor(p, dtype=torch.long) for p in plans]


def plan_family_rows(families: Tensor, prompts: Tensor, responses: Tensor, micro_batch_size: int,
                     max_tokens: int | None, max_row_tokens: int | None, packed: bool = False) -> list[Tensor]:
    """Row indices of each micro-batch for prompt-shared forwards: families with the most tokens first, each
    family's rows together (longest response first), cut at micro_batch_size rows or max_tokens packed cells
    (with `packed`, the family rows' tokens: a varlen forward runs them end to end)."""
    _check_limits(micro_batch_size, max_tokens)
    fam, prompt, response = families.tolist(), prompts.tolist(), responses.tolist()
    total: dict[int, int] = {}
    for b, f in enumerate(fam):
        total[f] = total.get(f, prompt[b]) + response[b]
    order = sorted(range(len(fam)), key=lambda b: (-total[fam[b]], fam[b], -response[b], b))
    plans: list[list[int]] = []
    packer = FamilyPacker(max_row_tokens, packed)
    for b in order:
        fits = (plans and len(plans[-1]) < micro_batch_size
                and (max_tokens is None or packer.cost_with(fam[b], prompt[b], response[b]) <= max_tokens))
        if not fits:
            plans.append([])
            packer = FamilyPacker(max_row_tokens, packed)
        plans[-1].append(b)
        packer.add(b, fam[b], prompt[b], response[b])
    return [torch.tensor(p, dtype=torch.long) for p in plans]


def split_to_count(plans: list[Tensor], count: int) -> list[Tensor]:
    """Halve the micro-batch with the most rows until there are `count`; each piece keeps >= 1 row."""
    plans = list(plans)
    while len(plans) < count:
        biggest = max(range(len(plans)), key=lambda i: len(plans[i]))
        if len(plans[biggest]) < 2:
            raise RuntimeError(f"cannot make {count} micro-batches from {sum(len(p) for p in plans)} rows")
        half = (len(plans[biggest]) + 1) // 2
        plans[biggest:biggest + 1] = [plans[biggest][:half], plans[biggest][half:]]
    return plans


def agree_on_count(local: int, group: ProcessGroup | None, device: torch.device) -> int:
    """The largest micro-batch count of the data-parallel group (one all_reduce)."""
    n = torch.tensor([local], dtype=torch.int64, device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX, group=group)
    return int(n[0])
