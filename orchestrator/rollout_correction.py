"""Rollout correction: the rollout engine's policy (mu) is never exactly the trainer's (pi_old), so reweight or drop.

Two engines give different log-probs for the same tokens (other kernels or dtypes; a vLLM bf16 rollout
against an fp32 trainer). The PPO ratio is taken against pi_old, but the tokens were sampled from mu,
so the gradient is off-policy by w = pi_old / mu. The modes (`algorithm.rollout_correction.mode`):

- `none`: measure the gap only.
- `tis`: truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly
  Brings You Off-Policy RL Training"): the policy-gradient term of each token is multiplied by
  the detached weight min(w, C), C = `is_threshold`. Implemented by scaling the advantages: every
  policy loss here is linear in A with a positive per-token factor, so w*A gives exactly w times
  the surrogate (clip bounds and the dual clip included); entropy and KL terms are not weighted.
- `mask`: rejection: tokens (or whole sequences) whose weight lies outside [1/C, C] are dropped
  from the update (their response mask is zeroed, so they leave the loss normalisation too).
- `bypass`: no correction and no recompute: the rollout log-probs are the old log-probs (the
  trainer skips its old-log-prob pass; the ratio is then taken against mu directly, which is the
  behaviour policy and so needs no IS weight).
- `auto`: skip what is redundant. The trainer recomputes pi_old on the first step and on verify
  steps (`hybrid.verify_every`); while the last measured mean |log pi_old - log mu| is at most
  `equal_tolerance` (1e-4 nats by default; two fp32 engines measure ~1e-6), the steps in between
  take the rollout's log-probs as pi_old, as bypass does: the two are the same numbers far below
  the PPO clip's resolution (a ratio off by 1e-4 against a clip of 0.2). A larger gap (a bf16 or
  vLLM rollout against an fp32 trainer) makes every step recompute, uncorrected as with `none`:
  choose `tis` or `mask` to reweight such gaps.

`is_level`: `token` uses w_t = exp(log pi_old(t) - log mu(t)); `sequence` uses the product over the
response, w = exp(sum_t (log pi_old(t) - log mu(t))), for every token of that sequence (the
sequence-level estimator is unbiased for sequence-level rewards but has higher variance; token
level is what the TIS paper uses, hence the default).
"""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor

from workers.batch import Batch

MODES = ("none", "tis", "mask", "bypass", "auto")
LEVELS = ("token", "sequence")


def log_ratios(old_log_probs: Tensor, rollout_log_probs: Tensor, mask: Tensor) -> Tensor:
    """log pi_old - log mu per valid token (0 on padding)."""
    return (old_log_probs - rollout_log_probs) * mask


def importance_weights(log_ratio: Tensor, mask: Tensor, level: str) -> Tensor:
    """w per token [B, R]: exp of the token's log ratio, or of its sequence's summed log ratio (0 on padding)."""
    if level == "token":
        w = log_ratio.exp()
    elif level == "sequence":
        w = (log_ratio * mask).sum(dim=-1, keepdim=True).exp().expand_as(log_ratio)
    else:
        raise ValueError(f"rollout correction: is_level must be one of {LEVELS}, got {level!r}")
    return w * mask


def correct(batch: Batch, settings: DictConfig) -> tuple[Batch, dict[str, float]]:
    """Apply `settings` (algorithm.rollout_correction) to a batch with advantages; returns it and its metrics."""
    mode, level, threshold = settings.mode, settings.is_level, float(settings.is_threshold)
    if mode not in MODES:
        raise ValueError(f"rollout correction: mode must be one of {MODES}, got {mode!r}")
    if mode in ("bypass", "none", "auto"):
        return batch, {}
    mask = batch["response_mask"].float()
    w = importance_weights(log_ratios(batch["old_log_probs"], batch["rollout_log_probs"], mask), mask, level)
    valid = mask.bool()
    tokens = max(float(mask.sum()), 1.0)
    metrics = {"rollout_correction/is_weight_mean": float(w[valid].mean()) if valid.any() else 1.0,
               "rollout_correction/is_weight_max": float(w[valid].max()) if valid.any() else 1.0}
    if mode == "tis":
        truncated = (w > threshold) & valid
        batch["advantages"] = batch["advantages"] * w.clamp(max=threshold)
        metrics["rollout_correction/truncated_frac"] = float(truncated.sum()) / tokens
    else:
        dropped = ((w > threshold) | (w < 1.0 / threshold)) & valid
        batch["response_mask"] = (batch["response_mask"] * (~dropped)).to(batch["response_mask"].dtype)
        metrics["rollout_correction/masked_frac"] = float(dropped.sum()) / tokens
    return batch, metrics


def gap_metrics(old_log_probs: Tensor, rollout_log_probs: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the rollout's log-probs are from the trainer's: token mean/p99/max |diff|, the k3 KL estimate
    of KL(mu || pi_old) over tokens sampled from mu, and the largest per-sequence mean |diff|."""
    valid = mask.bool()
    if not valid.any():
        return {}
    diff = (old_log_probs - rollout_log_probs)
    absdiff = diff.abs()[valid]
    ratio = diff[valid].exp()  # pi_old / mu on tokens drawn from mu
    k3 = (ratio - 1 - diff[valid]).mean()
    per_seq = (diff.abs() * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return {"sync/logprob_mean_abs_diff": float(absdiff.mean()), "sync/logprob_max_abs_diff": float(absdiff.max()),
            "sync/logprob_p99_abs_diff": float(torch.quantile(absdiff.float(), 0.99)),
            "sync/kl_k3": float(k3) if math.isfinite(float(k3)) else float("nan"),
            "sync/seq_max_mean_abs_diff": float(per_seq.max())}
