"""Supervised fine-tuning loss: token-mean negative log-likelihood of the response tokens.

Written as an engine LossFn so `baton sft` reuses `FSDPEngine.train_mini_batch` unchanged:
dividing by the mini-batch's global token count makes each micro-batch's value its
contribution, and the contributions sum to the mean NLL over the whole mini-batch.
"""
from __future__ import annotations

from torch import Tensor

from workers.batch import Batch
from workers.engines import LossNorm


def sft_loss(outputs: dict[str, Tensor], micro_batch: Batch, norm: LossNorm) -> tuple[Tensor, dict[str, Tensor]]:
    """-sum(log_probs * response_mask) / global_tokens; metric `nll` is this micro-batch's own token mean."""
    log_probs = outputs["log_probs"]
    mask = micro_batch["response_mask"].to(device=log_probs.device, dtype=log_probs.dtype)
    nll_sum = -(log_probs * mask).sum()
    loss = nll_sum / max(norm.global_tokens, 1.0)
    return loss, {"nll": (nll_sum / mask.sum().clamp(min=1.0)).detach()}
