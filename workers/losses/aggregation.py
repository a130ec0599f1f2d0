"""Reducing a per-token loss matrix [B, R] to the scalar that is back-propagated.

Why global counts: with gradient accumulation over micro-batches (and data-parallel
ranks), dividing each micro-batch by its *own* token/sequence count weights tokens
unequally. Dividing by the count over the whole mini-batch instead makes each call a
*contribution*: summing the contributions of every micro-batch on every rank gives
exactly the full mini-batch loss. (FSDP averages gradients over ranks, so the engine
multiplies each contribution by the DP world size before backward: LossNorm.dp_size.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workers.losses.masked import masked_sum

AGG_MODES: tuple[str, ...] = (
    "token-mean",  # sum over all valid tokens / #tokens (DAPO's token-level loss, Yu et al. 2025)
    "token-sum",  # plain sum over all valid tokens, no normaliser (scale grows with batch and length)
    "seq-mean-token-sum",  # mean over sequences of the per-sequence token sum
    "seq-mean-token-mean",  # mean over sequences of the per-sequence token mean (GRPO, Shao et al. 2024)
    "seq-mean-token-sum-norm",  # Dr.GRPO (Liu et al. 2025): token sum / constant, mean over sequences
)


def count_tokens(mask: Tensor) -> float:
    """Number of valid tokens: the unit of `global_tokens` (sum it over micro-batches and ranks)."""
    return float(mask.to(torch.float32).sum().item())


def count_seqs(mask: Tensor) -> float:
    """Number of rows with at least one valid token: the unit of `global_seqs`."""
    return float((mask.to(torch.float32).sum(dim=-1) > 0).sum().item())


@dataclass(frozen=True)
class LossAgg:
    """How a loss matrix becomes a scalar.

    mode: one of AGG_MODES.
    global_tokens: valid tokens in the whole mini-batch (all micro-batches, all DP ranks);
        None = use this call's own count (the call is then a complete loss, not a contribution).
        Same unit as the engine's LossNorm.global_tokens; 0 (degenerate batch) divides by 1.
    global_seqs: sequences with >= 1 valid token in the whole mini-batch (LossNorm.global_seqs);
        None = local count.
    norm_constant: divisor of each sequence's token sum in "seq-mean-token-sum-norm"
        (Dr.GRPO uses the maximum response length); must be None for the other modes.
    """

    mode: str
    global_tokens: float | None
    global_seqs: float | None
    norm_constant: float | None

    def __post_init__(self) -> None:
        if self.mode not in AGG_MODES:
            raise ValueError(f"unknown loss aggregation mode {self.mode!r}; known: {', '.join(AGG_MODES)}")
        if self.mode == "seq-mean-token-sum-norm":
            if self.norm_constant is None or self.norm_constant <= 0:
                raise ValueError(f"mode {self.mode!r} needs norm_constant > 0, got {self.norm_constant}")
        elif self.norm_constant is not None:
            raise ValueError(f"norm_constant is only used by 'seq-mean-token-sum-norm', not {self.mode!r}")
        for name in ("global_tokens", "global_seqs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 when given, got {value}")

    def reduce(self, loss_mat: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss of loss_mat [B, R] over mask [B, R] (a contribution if global counts are set)."""
        m = mask.to(loss_mat.dtype)
        if self.mode == "token-sum":
            # No divisor at all, so no count to make global: a micro-batch's own sum is its exact share, and
            # the shares of any split (micro-batches, DP ranks) add up to the mini-batch sum.
            return masked_sum(loss_mat, mask)
        if self.mode == "token-mean":
            # local counts stay tensors (no device sync); global ones are python floats
            n_tok = m.sum().clamp(min=1.0) if self.global_tokens is None else max(self.global_tokens, 1.0)
            return masked_sum(loss_mat, mask) / n_tok

        tok_per_seq = m.sum(dim=-1)
        seq_sum = masked_sum(loss_mat, mask, dim=-1)
        if self.mode == "seq-mean-token-sum":
            per_seq = seq_sum
        elif self.mode == "seq-mean-token-mean":
            per_seq = seq_sum / tok_per_seq.clamp(min=1.0)
        else:  # seq-mean-token-sum-norm
            per_seq = seq_sum / self.norm_constant
        if self.global_seqs is None:
            n_seq = (tok_per_seq > 0).to(loss_mat.dtype).sum().clamp(min=1.0)
        else:
            n_seq = max(self.global_seqs, 1.0)
        return per_seq.sum() / n_seq


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    *,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    norm_constant: float | None = None,
) -> Tensor:
    """Scalar loss (or micro-batch contribution when global counts are given); see AGG_MODES."""
    return LossAgg(mode, global_tokens, global_seqs, norm_constant).reduce(loss_mat, mask)
