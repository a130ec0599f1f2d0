"""Rows that share a prompt run as one sequence: the prompt once, then each row's response.

GRPO-style jobs sample n responses per prompt, and every training-side forward (ref, old
log-probs, the update's forward and backward) would otherwise compute the same prompt n times.
Here the rows of a micro-batch whose prompts are identical (same tokens at the same positions)
become one packed "family" row, [prompt | response 1 | response 2 | ...], under a mask with
which each response attends to the prompt and to its own earlier tokens only. Every token keeps
its original position id, so each response token sees exactly the keys, values and positions it
saw in its own row: log-probs equal the padded path's (to float rounding), and in backward the
prompt's gradient is the sum of its n responses' contributions, as with n separate rows.

What it costs: attention over a family row is dense over its length (SDPA computes masked cells,
it does not skip them), so a family row is cut at `max_row_tokens` (the engine's token budget, else
2,048); and a 4-D boolean mask turns off the flash kernels on GPU. With model.attn_implementation=varlen
(workers/engines/varlen.py) the family rows run end to end as one sequence, each under its own mask,
instead of padded to the longest family of the micro-batch. Hence on for the CPU tiny model (configs/model/tiny.yaml; `baton bench train
--group-size 8` and `baton bench throughput` measure it, BENCHMARKS.md), off in configs/model/hf.yaml.
This is prefix sharing in the training forward (the rollout engines already prefill a prompt once per
group).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workers.engines.compaction import attended_span

DEFAULT_MAX_ROW_TOKENS = 2048  # family row cap when the engine has no token budget (attention is dense in it)
PROMPT = -1  # segment id of a family row's prompt cells
PAD = -2  # segment id of a family row's padding


def prompt_families(input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, prompt_width: int) -> Tensor:
    """[b] family id: rows share one iff their attended prompt cells hold the same tokens at the same positions."""
    attended = attention_mask[:, :prompt_width] > 0
    key = torch.cat([attended.long(), torch.where(attended, input_ids[:, :prompt_width], 0),
                     torch.where(attended, position_ids[:, :prompt_width], 0)], dim=1)
    return torch.unique(key, dim=0, return_inverse=True)[1]


class FamilyPacker:
    """Greedy assignment of rows to packed family rows, a family row closed once it would pass `max_row_tokens`.

    The micro-batch planner (workers/engines/micro_batches.py) and `share_prompts` use the same
    rule, so a planned micro-batch costs exactly `cost()` cells when it runs.
    """

    def __init__(self, max_row_tokens: int | None, packed: bool = False) -> None:
        self.max_row_tokens = max_row_tokens
        self.packed = packed  # varlen: packed rows run end to end, no padding (workers/engines/varlen.py)
        self.rows: list[list[int]] = []  # members of each packed row, in arrival order
        self.lengths: list[int] = []  # cells of each packed row
        self._open: dict[int, int] = {}  # family -> its packed row still taking members

    def _target(self, family: int, response: int) -> int | None:
        k = self._open.get(family)
        if k is None:
            return None
        fits = self.max_row_tokens is None or self.lengths[k] + response <= self.max_row_tokens
        return k if fits else None

    def cost_with(self, family: int, prompt: int, response: int) -> int:
        """Cells (packed rows x longest packed row, or their sum when packed) once this row is added."""
        k = self._target(family, response)
        if self.packed:
            return sum(self.lengths) + response + (0 if k is not None else prompt)
        if k is not None:
            return len(self.rows) * max(max(self.lengths), self.lengths[k] + response)
        return (len(self.rows) + 1) * max([prompt + response, *self.lengths])

    def add(self, row: int, family: int, prompt: int, response: int) -> None:
        k = self._target(family, response)
        if k is None:
            self._open[family] = len(self.rows)
            self.rows.append([row])
            self.lengths.append(prompt + response)
        else:
            self.rows[k].append(row)
            self.lengths[k] += response

    def cost(self) -> int:
        return sum(self.lengths) if self.packed else len(self.rows) * max(self.lengths, default=0)


@dataclass(frozen=True)
class SharedPrompts:
    """A micro-batch packed by family.

    inputs: input_ids / position_ids [F, W] and attention_mask [F, 1, W, W] (bool: True attends).
    family: [b] the packed row holding row b.
    column: [b, R] the packed column whose output predicts row b's response token t (clamped, and
        not meaningful, where `valid` is False).
    valid: [b, R] whether row b has a response token t.
    lengths: [F] cells of each packed row before its padding.
    """

    inputs: dict[str, Tensor]
    family: Tensor
    column: Tensor
    valid: Tensor
    lengths: Tensor

    @property
    def width(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def row_spans(attention_mask: Tensor, prompt_width: int) -> tuple[Tensor, Tensor] | None:
    """(prompt_start [b], response_length [b]) of the rollout layout; None unless every row is one
    attended run with at least one prompt token (anything else runs compacted or padded)."""
    start, lengths, contiguous = attended_span(attention_mask)
    if not contiguous or bool((start >= prompt_width).any()) or bool((lengths == 0).any()):
        return None
    return start, (start + lengths - prompt_width).clamp(min=0)


def share_prompts(inputs: dict[str, Tensor], prompt_width: int, response_width: int,
                  max_row_tokens: int | None) -> SharedPrompts | None:
    """The micro-batch packed by family, or None when no two rows share a prompt (compaction is then
    the same work with a cheaper mask) or the rows are not in the rollout layout."""
    ids, mask, pos = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
    spans = row_spans(mask, prompt_width)
    if spans is None:
        return None
    start, response = spans
    families = prompt_families(ids, mask, pos, prompt_width).tolist()
    starts, responses = start.tolist(), response.tolist()
    packer = FamilyPacker(max_row_tokens)
    for b, family in enumerate(families):
        packer.add(b, family, prompt_width - starts[b], responses[b])
    if len(packer.rows) == len(families):
        return None
    n, width, device = len(families), max(packer.lengths), ids.device
    packed_ids = torch.zeros(len(packer.rows), width, dtype=ids.dtype, device=device)
    packed_pos = torch.zeros(len(packer.rows), width, dtype=pos.dtype, device=device)
    segment = torch.full((len(packer.rows), width), PAD, dtype=torch.long, device=device)
    family_of = [0] * n
    first_column = [0] * n  # packed column predicting response token 0 / holding response token t >= 1 at +t-1
    for k, members in enumerate(packer.rows):
        head = members[0]
        prompt = prompt_width - starts[head]
        packed_ids[k, :prompt] = ids[head, starts[head]:prompt_width]
        packed_pos[k, :prompt] = pos[head, starts[head]:prompt_width]
        segment[k, :prompt] = PROMPT
        at = prompt
        for j, b in enumerate(members):
            r = responses[b]
            packed_ids[k, at:at + r] = ids[b, prompt_width:prompt_width + r]
            packed_pos[k, at:at + r] = pos[b, prompt_width:prompt_width + r]
            segment[k, at:at + r] = j
            family_of[b], first_column[b] = k, at
            at += r
    t = torch.arange(response_width, device=device)
    offset = torch.tensor(first_column, device=device)
    prompt_last = torch.tensor([prompt_width - starts[packer.rows[family_of[b]][0]] - 1 for b in range(n)],
                               device=device)
    column = torch.where(t[None, :] == 0, prompt_last[:, None], offset[:, None] + t[None, :] - 1)
    valid = t[None, :] < response[:, None].to(device)
    query, key = segment[:, :, None], segment[:, None, :]
    attend = (key == PROMPT) | (key == query)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    allowed = causal[None] & attend & (query != PAD) & (key != PAD)
    allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]  # a padding cell sees itself: no empty softmax
    return SharedPrompts(
        inputs={"input_ids": packed_ids, "attention_mask": allowed[:, None], "position_ids": packed_pos},
        family=torch.tensor(family_of, device=device), column=column.clamp(0, width - 1), valid=valid,
        lengths=torch.tensor(packer.lengths, device=device),
    )


def computed_tokens(attention_mask: Tensor, prompt_width: int, uids: list) -> int:
    """Tokens the prompt-shared forwards compute for a batch: each uid's prompt once, every response token
    (what MFU counts as the model's work; a family cut at the row cap computes its prompt once more)."""
    attended = int((attention_mask > 0).sum())
    prompt = (attention_mask[:, :prompt_width] > 0).sum(dim=1).tolist()
    seen: set = set()
    repeated = 0
    for uid, length in zip(uids, prompt):
        if uid in seen:
            repeated += length
        seen.add(uid)
    return attended - repeated
