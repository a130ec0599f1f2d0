"""Log-probs and entropy from vocabulary-parallel logits, never gathering the vocabulary.

Each tensor-parallel rank holds logits for its slice of the (padded) vocabulary. With
m = max over the whole vocabulary (one MAX all-reduce, no gradient), Z = sum exp(l - m) and the
target's shifted logit are partial sums over slices: one SUM all-reduce each, whose backward is
the identity (Megatron's `reduce_from_tensor_model_parallel_region`: every rank computes the same
loss from the reduced values, so each slice's gradient is simply its own part). Then

    log p(target) = (l_target - m) - log Z
    entropy       = log Z - sum_v p_v (l_v - m)

Vocabulary padding (the vocabulary rounded up to a multiple of the TP size) is pushed to a very
negative finite logit, so it has zero probability and contributes 0 (not NaN) to the entropy.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup

_PADDING_LOGIT = -1e30


def _reduce(t: Tensor, group: ProcessGroup | None) -> Tensor:
    if group is None or dist.get_world_size(group) == 1:
        return t
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    return reduce_from_tensor_model_parallel_region(t, group=group)


def vocab_parallel_log_probs(logits: Tensor, targets: Tensor, *, vocab_start: int, vocab_size: int,
                             group: ProcessGroup | None, with_entropy: bool) -> dict[str, Tensor]:
    """`log_probs` (and `entropy`) [..] of `targets` [..] from this rank's logit slice [.., V_local], in float32.

    vocab_start: the global id of this slice's first column; vocab_size: the real (unpadded) vocabulary.
    """
    logits = logits.float()
    local = logits.shape[-1]
    ids = torch.arange(vocab_start, vocab_start + local, device=logits.device)
    if vocab_start + local > vocab_size:
        logits = logits.masked_fill(ids >= vocab_size, _PADDING_LOGIT)
    top = logits.detach().max(dim=-1).values
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - top.unsqueeze(-1)
    exp = shifted.exp()
    sum_exp = _reduce(exp.sum(dim=-1), group)
    log_z = sum_exp.log()
    mine = (targets >= vocab_start) & (targets < vocab_start + local)
    local_ids = (targets - vocab_start).clamp(0, local - 1)
    target_logit = shifted.gather(-1, local_ids.unsqueeze(-1)).squeeze(-1) * mine
    out = {"log_probs": _reduce(target_logit, group) - log_z}
    if with_entropy:
        expected = _reduce((exp * shifted).sum(dim=-1), group) / sum_exp
        out["entropy"] = log_z - expected
    return out
