"""KL estimators, KL loss, KL reward penalty and the KL controllers, against hand-computed values."""

import math

import pytest
import torch

from orchestrator.kl_control import (
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    make_kl_controller,
)
from workers.losses.aggregation import LossAgg
from workers.losses.kl import kl_loss, kl_penalty

# two tokens: x = log_prob - ref_log_prob = [0.5, -1.0]
LOGP = torch.tensor([[-1.0, -2.0]])
REF = torch.tensor([[-1.5, -1.0]])
TOKEN_MEAN = LossAgg("token-mean", None, None, None)


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("k1", [0.5, -1.0]),
        ("k2", [0.125, 0.5]),
        ("mse", [0.125, 0.5]),
        # exp(ref - logp) - (ref - logp) - 1 with ref - logp = [-0.5, 1.0]
        ("k3", [math.exp(-0.5) + 0.5 - 1.0, math.e - 1.0 - 1.0]),
        ("low_var_kl", [math.exp(-0.5) + 0.5 - 1.0, math.e - 1.0 - 1.0]),
        ("abs", [0.5, 1.0]),
    ],
)
def test_estimators_two_tokens(kind, expected):
    assert torch.allclose(kl_penalty(LOGP, REF, kind), torch.tensor([expected]), atol=1e-6)


def test_k3_is_clamped_and_has_finite_gradients():
    logp = torch.tensor([[-30.0, 0.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[0.0, -30.0, -1.0]])
    kl = kl_penalty(logp, ref, "k3")
    # ref - logp = 30 -> exp(20) - 21, clamped to 10; ref - logp = -30 -> e^-20 + 19, clamped to 10
    assert torch.allclose(kl, torch.tensor([[10.0, 10.0, 0.0]]))
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()


def test_unknown_kind_lists_names():
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(LOGP, REF, "k4")


@pytest.mark.parametrize("kind,value", [
    ("k1+", [0.5, -1.0]),  # the k1 value
    ("k3+", [0.1065307, 0.7182818]),  # the k3 value: e^-0.5 + 0.5 - 1, e - 2
])
def test_straight_through_estimators_have_k_value_and_k2_gradient(kind, value):
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = kl_loss(logp, REF, torch.ones(1, 2), kind=kind, agg=TOKEN_MEAN)
    assert loss.item() == pytest.approx(sum(value) / 2, abs=1e-6)
    loss.backward()
    # d k2 / d logp = x = logp - ref = [0.5, -1.0], over 2 tokens; k1's own gradient would be [1, 1] / 2
    # and k3's (1 - exp(ref - logp)) / 2 = [0.3935, -1.7183] / 2
    assert torch.allclose(logp.grad, torch.tensor([[0.25, -0.5]]), atol=1e-6)


def test_straight_through_kinds_are_loss_only():
    from orchestrator.config import ConfigError, compose_config, validate_config

    with pytest.raises(ValueError, match="k3"):
        kl_penalty(LOGP, REF, "k1+")  # as a reward penalty there is no gradient: it would just be k1
    for kind in ("k1+", "k3+"):
        validate_config(compose_config([f"actor.kl_loss_type={kind}", "actor.use_kl_loss=true"]), check_files=False)
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(["algorithm.kl_penalty=k3+"]), check_files=False)
    assert err.value.key == "algorithm.kl_penalty"


def test_kl_loss_token_mean_ignores_padding():
    logp = torch.tensor([[-1.0, -2.0, 5.0]])
    ref = torch.tensor([[-1.5, -1.0, -5.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = kl_loss(logp, ref, mask, kind="k2", agg=TOKEN_MEAN)
    assert loss.item() == pytest.approx((0.125 + 0.5) / 2)
    assert metrics["kl_loss"].item() == pytest.approx(0.3125)


def test_apply_kl_penalty_hand_values():
    scores = torch.tensor([[0.0, 1.0], [2.0, 0.0]])  # score on each row's last valid token
    logp = torch.tensor([[-1.0, -2.0], [-1.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0], [-1.2, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    rewards, metrics = apply_kl_penalty(scores, logp, ref, mask, FixedKLController(kl_coef=0.1), "k1")
    # k1 = [[0.5, -1.0], [0.2, masked]]
    assert torch.allclose(rewards, torch.tensor([[-0.05, 1.1], [1.98, 0.0]]), atol=1e-6)
    # mean over sequences of per-sequence mean KL: (-0.25 + 0.2) / 2
    assert metrics["kl"] == pytest.approx(-0.025, abs=1e-6)
    assert metrics["kl_coef"] == pytest.approx(0.1)


def test_adaptive_controller_update_rule():
    ctl = AdaptiveKLController(kl_coef=0.2, target_kl=1.0, horizon=100)
    ctl.update(current_kl=1.1, n_steps=10)  # e = 0.1 -> x (1 + 0.1 * 10/100)
    assert ctl.value == pytest.approx(0.2 * 1.01)
    ctl.update(current_kl=5.0, n_steps=10)  # e = 4 clipped to 0.2 -> x 1.02
    assert ctl.value == pytest.approx(0.2 * 1.01 * 1.02)
    ctl.update(current_kl=0.0, n_steps=50)  # e = -1 clipped to -0.2 -> x 0.9
    assert ctl.value == pytest.approx(0.2 * 1.01 * 1.02 * 0.9)


def test_fixed_controller_and_factory():
    section = {"type": "fixed", "kl_coef": 0.05, "target_kl": 6.0, "horizon": 10000}  # algorithm.kl_ctrl
    fixed = make_kl_controller("fixed", section)
    fixed.update(current_kl=100.0, n_steps=64)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.05
    adaptive = make_kl_controller("adaptive", section)
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.value == 0.05
    assert (adaptive.target_kl, adaptive.horizon) == (6.0, 10000)
    with pytest.raises(ValueError, match="adaptive"):
        make_kl_controller("adaptve", section)
    with pytest.raises(ValueError, match="target_kl"):
        make_kl_controller("adaptive", {"kl_coef": 0.1})
    with pytest.raises(ValueError):
        AdaptiveKLController(kl_coef=0.1, target_kl=0.0, horizon=10)
