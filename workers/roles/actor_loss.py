"""The actor's loss: a registered policy loss, plus optional entropy bonus and KL-to-reference term.

Built once from config; the engine calls it per micro-batch with the mini-batch's global counts,
so every aggregation mode gives the exact mini-batch loss under gradient accumulation.
"""
from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig
from torch import Tensor

from workers.batch import Batch
from workers.engines import LossFn, LossNorm
from workers.losses.aggregation import LossAgg
from workers.losses.kl import kl_loss
from workers.losses.registry import get_policy_loss_fn, policy_loss_params


def actor_norm_constant(cfg: DictConfig) -> float:
    """Divisor of "seq-mean-token-sum-norm": actor.loss_norm_constant, or rollout.max_new_tokens when null."""
    constant = cfg.actor.loss_norm_constant
    return float(cfg.rollout.max_new_tokens if constant is None else constant)


def make_actor_loss(actor_cfg: DictConfig, *, norm_constant: float) -> LossFn:
    policy_fn = get_policy_loss_fn(actor_cfg.policy_loss.name)
    params = policy_loss_params(actor_cfg.policy_loss.name, dict(actor_cfg.policy_loss))
    mode = actor_cfg.loss_agg_mode
    constant = norm_constant if mode == "seq-mean-token-sum-norm" else None

    def loss_fn(outputs: dict[str, Tensor], mb: Batch, norm: LossNorm) -> tuple[Tensor, Mapping[str, Tensor | float]]:
        agg = LossAgg(mode, norm.global_tokens, norm.global_seqs, constant)
        log_prob = outputs["log_probs"]
        on_device = lambda key: mb[key].to(log_prob.device)  # noqa: E731 - the batch stays on the host
        mask = on_device("response_mask")
        loss, metrics = policy_fn(log_prob, on_device("old_log_probs"), on_device("advantages"), mask, agg=agg,
                                  **params)
        metrics = {f"actor/{k}": v for k, v in metrics.items()}
        metrics["actor/pg_loss"] = loss.detach()
        if "entropy" in outputs:
            entropy = agg.reduce(outputs["entropy"], mask)
            metrics["actor/entropy"] = LossAgg("token-mean", None, None, None).reduce(outputs["entropy"].detach(), mask)
            if actor_cfg.entropy_coeff:
                loss = loss - actor_cfg.entropy_coeff * entropy
        if actor_cfg.use_kl_loss:
            kl, _ = kl_loss(log_prob, on_device("ref_log_probs"), mask, kind=actor_cfg.kl_loss_type, agg=agg)
            loss = loss + actor_cfg.kl_loss_coef * kl
            metrics["actor/kl_loss"] = kl.detach()
        return loss, metrics

    return loss_fn
