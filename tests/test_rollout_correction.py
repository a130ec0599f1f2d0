"""Rollout correction against hand-computed values: IS weights (token, sequence), truncation, masking, the gap."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from orchestrator.rollout_correction import correct, gap_metrics, importance_weights, log_ratios
from workers.batch import Batch
from workers.losses.aggregation import LossAgg
from workers.losses.policy import ppo_loss


def _batch(old, rollout, mask, adv=None) -> Batch:
    old, rollout, mask = torch.tensor(old), torch.tensor(rollout), torch.tensor(mask)
    adv = torch.tensor(adv) if adv is not None else torch.ones_like(old)
    return Batch.from_dict({"old_log_probs": old, "rollout_log_probs": rollout, "response_mask": mask,
                            "advantages": adv})


def _settings(mode: str, level: str = "token", threshold: float = 2.0):
    return OmegaConf.create({"mode": mode, "is_level": level, "is_threshold": threshold})


def test_token_weights_are_exp_of_each_log_ratio_and_zero_on_padding():
    lr = log_ratios(torch.tensor([[0.0, -1.0, -3.0]]), torch.tensor([[-0.5, -1.0, -9.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert lr.tolist() == [[0.5, 0.0, 0.0]]
    w = importance_weights(lr, torch.tensor([[1.0, 1.0, 0.0]]), "token")
    assert w[0].tolist() == pytest.approx([math.exp(0.5), 1.0, 0.0])


def test_sequence_weight_is_the_product_over_the_response():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    lr = torch.tensor([[0.5, -0.2, 0.0], [-0.4, 0.0, 0.0]])
    w = importance_weights(lr, mask, "sequence")
    assert w.flatten().tolist() == pytest.approx([math.exp(0.3), math.exp(0.3), 0.0, math.exp(-0.4), 0.0, 0.0])


def test_tis_truncates_the_weights_and_scales_the_advantages():
    batch = _batch([[0.0, -1.0]], [[-0.5, -1.0]], [[1.0, 1.0]], adv=[[2.0, 2.0]])
    out, metrics = correct(batch, _settings("tis", threshold=1.5))
    assert out["advantages"][0].tolist() == pytest.approx([3.0, 2.0])  # min(e^0.5, 1.5) * 2, 1 * 2
    assert metrics["rollout_correction/truncated_frac"] == 0.5
    assert metrics["rollout_correction/is_weight_max"] == pytest.approx(math.exp(0.5))
    assert metrics["rollout_correction/is_weight_mean"] == pytest.approx((math.exp(0.5) + 1) / 2)


def test_mask_drops_tokens_outside_the_band():
    batch = _batch([[0.0, -1.0, -2.0, -1.0]], [[-1.0, -1.0, -1.0, -5.0]], [[1.0, 1.0, 1.0, 0.0]])
    out, metrics = correct(batch, _settings("mask", threshold=2.0))  # w = e, 1, 1/e (padding ignored)
    assert out["response_mask"].tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert metrics["rollout_correction/masked_frac"] == pytest.approx(2 / 3)


def test_mask_at_sequence_level_drops_whole_sequences():
    batch = _batch([[0.0, 0.0], [0.0, 0.0]], [[-0.5, -0.5], [-0.1, 0.1]], [[1.0, 1.0], [1.0, 1.0]])
    out, _ = correct(batch, _settings("mask", level="sequence", threshold=2.0))  # w = e^1 (dropped), e^0 (kept)
    assert out["response_mask"].tolist() == [[0.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("mode", ["none", "bypass"])
def test_none_and_bypass_change_nothing(mode):
    batch = _batch([[0.0]], [[-3.0]], [[1.0]], adv=[[1.5]])
    out, metrics = correct(batch, _settings(mode))
    assert out["advantages"].tolist() == [[1.5]] and out["response_mask"].tolist() == [[1.0]] and metrics == {}


def test_scaling_advantages_weights_the_ppo_surrogate_token_by_token():
    """Why TIS may scale advantages: the clipped (and dual-clipped) surrogate is linear in A for w > 0."""
    torch.manual_seed(0)
    logp, old = torch.randn(3, 5), torch.randn(3, 5)
    adv, w, mask = torch.randn(3, 5), torch.rand(3, 5) + 0.2, torch.ones(3, 5)
    agg = LossAgg("token-mean", float(mask.sum()), 3.0, None)
    params = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.3, "dual_clip_c": 3.0}
    scaled, _ = ppo_loss(logp, old, adv * w, mask, agg=agg, **params)
    per_token = [ppo_loss(logp[i:i + 1, j:j + 1], old[i:i + 1, j:j + 1], adv[i:i + 1, j:j + 1], mask[:1, :1],
                          agg=LossAgg("token-mean", 1.0, 1.0, None), **params)[0] for i in range(3) for j in range(5)]
    weighted = sum(w.flatten()[k] * per_token[k] for k in range(15)) / 15
    assert float(scaled) == pytest.approx(float(weighted), rel=1e-5)


def test_gap_metrics_by_hand():
    old = torch.tensor([[0.0, -1.0, -2.0], [-1.0, 0.0, 0.0]])
    rollout = torch.tensor([[-0.1, -1.0, -2.3], [-1.2, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    got = gap_metrics(old, rollout, mask)
    diffs = [0.1, 0.0, 0.3, 0.2]
    assert got["sync/logprob_mean_abs_diff"] == pytest.approx(sum(diffs) / 4)
    assert got["sync/logprob_max_abs_diff"] == pytest.approx(0.3)
    assert got["sync/kl_k3"] == pytest.approx(sum(math.exp(d) - 1 - d for d in diffs) / 4)
    assert got["sync/seq_max_mean_abs_diff"] == pytest.approx(0.2)  # row means: 0.4/3 and 0.2
    assert 0.29 < got["sync/logprob_p99_abs_diff"] <= 0.3
