"""Training engines (FSDP2 today, Megatron later) and the contract they share with the losses.

A loss function sees one micro-batch at a time, yet the gradient we want is that of the
loss over the whole mini-batch (all micro-batches on all data-parallel ranks). So the
engine counts the mini-batch once, globally, and hands the counts to every call as a
`LossNorm`; the loss returns its micro-batch's *contribution* (e.g. token sum / global
token count), and the contributions add up to the mini-batch loss.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

if TYPE_CHECKING:
    from workers.batch import Batch


@dataclass(frozen=True)
class LossNorm:
    """Global counts of one mini-batch, identical on every data-parallel rank.

    global_tokens: valid response tokens (sum of `response_mask`) over all micro-batches and ranks;
        may be 0 for a degenerate mini-batch, so divide by max(global_tokens, 1).
    global_seqs: rows with at least one valid response token, over all micro-batches and ranks
        (rows padded in with an all-zero mask do not count).
    dp_size: number of data-parallel ranks; the engine multiplies each loss by it before
        backward because FSDP averages gradients over ranks.
    """

    global_tokens: float
    global_seqs: float
    dp_size: int


class LossFn(Protocol):
    """What `train_mini_batch` calls once per micro-batch.

    outputs: the engine's differentiable forward outputs for the micro-batch, [b, R] each
        (`log_probs`, and `entropy` when asked, for a causal LM; `values` for a value model;
        `scores` [b] for a reward model).
    Returns (contribution to the mini-batch loss, scalar metrics to average for logging).
    """

    def __call__(
        self, outputs: dict[str, Tensor], micro_batch: Batch, norm: LossNorm
    ) -> tuple[Tensor, Mapping[str, Tensor | float]]: ...


__all__ = ["LossFn", "LossNorm"]
