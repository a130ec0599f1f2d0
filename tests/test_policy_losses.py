"""Policy, value and entropy losses against hand-computed values and gradients."""

import math

import pytest
import torch

from workers.losses import (
    LossAgg,
    policy_loss_params,
    entropy_from_logits,
    entropy_loss,
    get_policy_loss_fn,
    list_policy_losses,
    value_loss,
)

TOKEN_MEAN = LossAgg("token-mean", None, None, None)
SEQ_MEAN_TOKEN_MEAN = LossAgg("seq-mean-token-mean", None, None, None)


def _from_ratios(ratios, log_prob):
    """log_prob requiring grad and old_log_prob such that exp(log_prob - old) = ratios."""
    lp = torch.tensor([log_prob], requires_grad=True)
    old = torch.tensor([log_prob]) - torch.log(torch.tensor([ratios]))
    return lp, old


# ---------------------------------------------------------------- registry


def test_registry_names_and_typo():
    assert list_policy_losses() == ["cispo", "gspo", "ppo", "reinforce"]
    with pytest.raises(ValueError, match="cispo, gspo, ppo, reinforce"):
        get_policy_loss_fn("ppo2")


def test_params_are_picked_from_one_config_section():
    section = {"name": "ppo", "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "dual_clip_c": None}
    assert policy_loss_params("ppo", section) == {k: v for k, v in section.items() if k != "name"}
    assert policy_loss_params("cispo", section) == {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28}
    assert policy_loss_params("reinforce", section) == {}
    with pytest.raises(ValueError, match="clip_ratio_high"):
        policy_loss_params("gspo", {"clip_ratio_low": 3e-4})


# ---------------------------------------------------------------- ppo

# tokens (A, ratio):  (+1, 1.1) inside | (+1, 1.5) upper clip | (-1, 0.5) lower clip
#                     (-2, 5.0) dual clip | (-1, 1.1) inside | padding
PPO_A = torch.tensor([[1.0, 1.0, -1.0, -2.0, -1.0, 50.0]])
PPO_R = [1.1, 1.5, 0.5, 5.0, 1.1, 9.0]
PPO_MASK = torch.tensor([[1, 1, 1, 1, 1, 0]])


def _ppo(dual_clip_c):
    lp, old = _from_ratios(PPO_R, [-1.0] * 6)
    loss, m = get_policy_loss_fn("ppo")(
        lp, old, PPO_A, PPO_MASK, agg=TOKEN_MEAN,
        clip_ratio_low=0.2, clip_ratio_high=0.28, dual_clip_c=dual_clip_c,
    )
    loss.backward()
    return loss, m, lp.grad


def test_ppo_clip_and_dual_clip_hand_values():
    loss, m, grad = _ppo(dual_clip_c=3.0)
    # per token: -1.1 | max(-1.5, -1.28) | max(0.5, 0.8) | min(max(10, 2.56), 6) | 1.1
    assert loss.item() == pytest.approx((-1.1 - 1.28 + 0.8 + 6.0 + 1.1) / 5, rel=1e-5)
    assert m["clipfrac"].item() == pytest.approx(2 / 5)
    assert m["clipfrac_lower"].item() == pytest.approx(1 / 5)
    ppo_kl = -sum(math.log(r) for r in PPO_R[:5]) / 5
    assert m["ppo_kl"].item() == pytest.approx(ppo_kl, rel=1e-5)
    # d/dlogp (-A r) = -A r on unclipped tokens, 0 on clipped ones, / 5 tokens
    assert torch.allclose(grad, torch.tensor([[-1.1 / 5, 0.0, 0.0, 0.0, 1.1 / 5, 0.0]]), atol=1e-6)


def test_ppo_without_dual_clip():
    loss, m, grad = _ppo(dual_clip_c=None)
    assert loss.item() == pytest.approx((-1.1 - 1.28 + 0.8 + 10.0 + 1.1) / 5, rel=1e-5)
    assert m["clipfrac_lower"].item() == 0.0
    assert grad[0, 3].item() == pytest.approx(2.0 * 5.0 / 5, rel=1e-5)  # -A r / 5, the exploding token


def test_ppo_rejects_dual_clip_below_one():
    lp, old = _from_ratios([1.0], [-1.0])
    with pytest.raises(ValueError, match="dual_clip_c"):
        get_policy_loss_fn("ppo")(lp, old, torch.ones(1, 1), torch.ones(1, 1), agg=TOKEN_MEAN,
                                  clip_ratio_low=0.2, clip_ratio_high=0.2, dual_clip_c=0.9)


# ---------------------------------------------------------------- cispo

# tokens (log_prob, ratio, A): (-1, 1.0, 2) | (-0.5, 2.0, 1) upper-clipped | (-2, 0.5, -1)
CISPO_LP = [-1.0, -0.5, -2.0]
CISPO_R = [1.0, 2.0, 0.5]
CISPO_A = torch.tensor([[2.0, 1.0, -1.0]])


def test_cispo_upper_clip_only_keeps_every_token():
    lp, old = _from_ratios(CISPO_R, CISPO_LP)
    loss, m = get_policy_loss_fn("cispo")(lp, old, CISPO_A, torch.ones(1, 3), agg=TOKEN_MEAN,
                                          clip_ratio_low=None, clip_ratio_high=0.28)
    loss.backward()
    # -sg(w) A logp with w = [1, 1.28, 0.5]
    assert loss.item() == pytest.approx((2.0 + 0.64 - 1.0) / 3, rel=1e-5)
    # grad = -w A / N: the clipped token still gets gradient (PPO would drop it)
    assert torch.allclose(lp.grad, torch.tensor([[-2.0 / 3, -1.28 / 3, 0.5 / 3]]), atol=1e-6)
    assert m["clipfrac"].item() == pytest.approx(1 / 3)
    assert m["clipfrac_lower"].item() == 0.0

    lp2, old2 = _from_ratios(CISPO_R, CISPO_LP)
    ppo_loss, _ = get_policy_loss_fn("ppo")(lp2, old2, CISPO_A, torch.ones(1, 3), agg=TOKEN_MEAN,
                                            clip_ratio_low=0.2, clip_ratio_high=0.28, dual_clip_c=None)
    ppo_loss.backward()
    assert lp2.grad[0, 1].item() == 0.0


def test_cispo_lower_bound_one_means_no_lower_clip():
    results = []
    for low in (None, 1.0):
        lp, old = _from_ratios(CISPO_R, CISPO_LP)
        loss, _ = get_policy_loss_fn("cispo")(lp, old, CISPO_A, torch.ones(1, 3), agg=TOKEN_MEAN,
                                              clip_ratio_low=low, clip_ratio_high=0.28)
        loss.backward()
        results.append((loss.item(), lp.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_cispo_with_lower_clip():
    lp, old = _from_ratios(CISPO_R, CISPO_LP)
    loss, m = get_policy_loss_fn("cispo")(lp, old, CISPO_A, torch.ones(1, 3), agg=TOKEN_MEAN,
                                          clip_ratio_low=0.2, clip_ratio_high=0.28)
    loss.backward()
    assert loss.item() == pytest.approx((2.0 + 0.64 - 1.6) / 3, rel=1e-5)
    assert lp.grad[0, 2].item() == pytest.approx(0.8 / 3, rel=1e-5)
    assert m["clipfrac_lower"].item() == pytest.approx(1 / 3)


# ---------------------------------------------------------------- gspo


def test_gspo_sequence_ratio_clip_and_per_token_gradient():
    # seq 0 (A=+1): log ratios [0.1, 0.3] -> s = e^0.2 = 1.2214 > 1.1: clipped, no gradient
    # seq 1 (A=-1): log ratios [0, -0.1, 0.04] -> s = e^-0.02, inside [0.9, 1.1]
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -0.7]], requires_grad=True)
    log_ratio = torch.tensor([[0.1, 0.3, 7.0], [0.0, -0.1, 0.04]])  # 7.0 sits on padding
    old = lp.detach() - log_ratio
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    loss, m = get_policy_loss_fn("gspo")(lp, old, adv, mask, agg=SEQ_MEAN_TOKEN_MEAN,
                                         clip_ratio_low=0.1, clip_ratio_high=0.1)
    loss.backward()
    s1 = math.exp(-0.02)
    assert loss.item() == pytest.approx((-1.1 + s1) / 2, rel=1e-5)
    # d/dlogp_t of (1/2)(1/3) sum_t -A s_{1,t} = s1 / 6 on every valid token of seq 1,
    # which equals the sequence-level GSPO gradient (1/2) * -A * s1 * (1/3)
    expected = torch.tensor([[0.0, 0.0, 0.0], [s1 / 6, s1 / 6, s1 / 6]])
    assert torch.allclose(lp.grad, expected, atol=1e-6)
    assert m["clipfrac"].item() == pytest.approx(2 / 5)


# ---------------------------------------------------------------- reinforce


def test_reinforce_is_minus_a_logp():
    lp = torch.tensor([[-1.0, -2.0, -4.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, m = get_policy_loss_fn("reinforce")(lp, lp.detach() + 0.1, adv, mask, agg=TOKEN_MEAN)
    loss.backward()
    assert loss.item() == pytest.approx((2.0 - 2.0) / 2)
    assert torch.allclose(lp.grad, torch.tensor([[-1.0, 0.5, 0.0]]))
    assert m["ppo_kl"].item() == pytest.approx(0.1)


# ---------------------------------------------------------------- value


def test_value_loss_clipping():
    values = torch.tensor([[1.0, 2.0, 1.0, 50.0]], requires_grad=True)
    old = torch.tensor([[0.9, 1.0, 2.0, 0.0]])
    returns = torch.tensor([[1.5, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, m = value_loss(values, old, returns, mask, cliprange_value=0.2, agg=TOKEN_MEAN)
    loss.backward()
    # 0.5 * max: 0.25 vs 0.25 | 1.0 vs 0.04 | 1.0 vs (1.8 - 0)^2 = 3.24
    assert loss.item() == pytest.approx((0.125 + 0.5 + 1.62) / 3, rel=1e-5)
    assert m["vf_clipfrac"].item() == pytest.approx(1 / 3)
    assert torch.allclose(values.grad, torch.tensor([[-0.5 / 3, 1.0 / 3, 0.0, 0.0]]), atol=1e-6)

    plain, m2 = value_loss(values, old, returns, mask, cliprange_value=None, agg=TOKEN_MEAN)
    assert plain.item() == pytest.approx((0.125 + 0.5 + 0.5) / 3, rel=1e-5)
    assert m2["vf_clipfrac"].item() == 0.0


# ---------------------------------------------------------------- entropy


def test_entropy_from_logits():
    uniform = torch.zeros(2, 3, 4)
    assert torch.allclose(entropy_from_logits(uniform), torch.full((2, 3), math.log(4)))
    two = torch.tensor([0.0, math.log(2.0)])  # p = [1/3, 2/3]
    expected = math.log(3) - (2 / 3) * math.log(2)
    assert entropy_from_logits(two).item() == pytest.approx(expected, rel=1e-6)
    assert entropy_from_logits(two + 1e4).item() == pytest.approx(expected, rel=1e-4)  # stable


def test_entropy_with_masked_vocab_has_no_nan():
    logits = torch.tensor([[0.0, float("-inf"), float("-inf")]], requires_grad=True)
    h = entropy_from_logits(logits)
    h.sum().backward()
    assert h.item() == 0.0
    assert torch.isfinite(logits.grad).all()


def test_entropy_loss_aggregates():
    ent = torch.tensor([[1.0, 2.0, 9.0]])
    assert entropy_loss(ent, torch.tensor([[1, 1, 0]]), agg=TOKEN_MEAN).item() == pytest.approx(1.5)
