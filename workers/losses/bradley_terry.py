"""Reward-model loss: Bradley-Terry pairwise preference, -log sigmoid(r_chosen - r_rejected)
(Ouyang et al. 2022, eq. 1), as an engine LossFn over rows laid out (chosen, rejected) pairwise."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.batch import Batch
from workers.engines import LossNorm


def split_pairs(scores: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) scores from rows interleaved as chosen_0, rejected_0, chosen_1, ..."""
    if scores.shape[0] % 2:
        raise ValueError(f"pairwise rows must come in (chosen, rejected) pairs, got {scores.shape[0]} rows")
    return scores[0::2], scores[1::2]


def bradley_terry_loss(outputs: dict[str, Tensor], micro_batch: Batch,
                       norm: LossNorm) -> tuple[Tensor, dict[str, Tensor]]:
    """Sum of -log sigmoid(margin) over this micro-batch's pairs / pairs in the whole mini-batch.

    Every row has a non-empty response (at least EOS), so the mini-batch holds global_seqs / 2
    pairs and the contributions of all micro-batches and ranks add up to the mean pair loss.
    """
    chosen, rejected = split_pairs(outputs["scores"])
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).sum() / max(norm.global_seqs / 2, 1.0)
    return loss, {"rm/accuracy": (margin > 0).to(torch.float32).mean().detach(),
                  "rm/margin": margin.detach().mean()}
