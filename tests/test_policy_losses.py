"""Policy, value and entropy losses against hand-computed values and gradients."""

import itertools
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
    assert list_policy_losses() == ["cispo", "clip_cov", "gspo", "kl_cov", "ppo", "reinforce", "sapo"]
    with pytest.raises(ValueError, match="cispo, clip_cov, gspo, kl_cov, ppo, reinforce, sapo"):
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


# ---------------------------------------------------------------- sapo

# tokens (A, ratio): (+1, 1) on policy | (+2, 2) tau_pos branch | (-1, 0.5) tau_neg branch | (0, 3) | padding
SAPO_A = torch.tensor([[1.0, 2.0, -1.0, 0.0, 5.0]])
SAPO_R = [1.0, 2.0, 0.5, 3.0, 7.0]
SAPO_MASK = torch.tensor([[1, 1, 1, 1, 0]])


def test_sapo_gate_values_and_gradients_both_branches():
    lp, old = _from_ratios(SAPO_R, [-1.0] * 5)
    loss, m = get_policy_loss_fn("sapo")(lp, old, SAPO_A, SAPO_MASK, agg=TOKEN_MEAN, tau_pos=1.0, tau_neg=2.0)
    loss.backward()
    # loss_mat = -A * (4 / tau) * sigmoid(tau (r - 1)):
    #   -1 * 4 * 0.5 = -2 | -2 * 4 * sigmoid(1) = -5.8484686 | +1 * 2 * sigmoid(-1) = 0.5378828 | 0
    assert loss.item() == pytest.approx((-2.0 - 5.8484686 + 0.5378828) / 4, rel=1e-6)
    assert loss.item() == pytest.approx(-1.8276465, rel=1e-6)
    # d/dlogp = -A * 4 s (1 - s) * r / 4 tokens: on policy it is the plain PG -A / 4;
    # tau_pos: -2 * 0.7864477 * 2 / 4; tau_neg: +1 * 0.7864477 * 0.5 / 4; A = 0: nothing
    expected = torch.tensor([[-1.0 / 4, -3.1457909 / 4, 0.3932239 / 4, 0.0, 0.0]])
    assert torch.allclose(lp.grad, expected, atol=1e-6)
    # gate weight 4 s (1 - s): 1 | 0.7864477 | 0.7864477 | A = 0 takes tau_neg = 2: 4 sigmoid(4)(1 - sigmoid(4))
    assert m["gate_weight"].item() == pytest.approx((1.0 + 0.7864477 + 0.7864477 + 0.0706508) / 4, rel=1e-6)
    assert m["ppo_kl"].item() == pytest.approx(-(math.log(2.0) + math.log(0.5) + math.log(3.0)) / 4, rel=1e-5)


def test_sapo_rejects_non_positive_temperature():
    lp, old = _from_ratios([1.0], [-1.0])
    with pytest.raises(ValueError, match="tau_neg"):
        get_policy_loss_fn("sapo")(lp, old, torch.ones(1, 1), torch.ones(1, 1), agg=TOKEN_MEAN,
                                   tau_pos=1.0, tau_neg=0.0)


# ---------------------------------------------------------------- clip_cov / kl_cov

# 8 valid tokens over rows of lengths 5 and 3; log_prob = -5 + d with mean(d) = 0, mean(A) = 0, so
# Cov_t = d_t * A_t exactly:
#   t1 (0,0) d=1    A=+2 cov 2  window          t5 (0,4) d=-0.5 A=-2 cov 1  on the bound: out
#   t2 (0,1) d=1.5  A=+2 cov 3  window          t6 (1,0) d=-1   A=-2 cov 2  window
#   t3 (0,2) d=2    A=+2 cov 4  ratio-clipped   t7 (1,1) d=-2   A=-2 cov 4  window
#   t4 (0,3) d=3    A=+2 cov 6  above ub        t8 (1,2) d=-4   A=-2 cov 8  above ub
COV_LP = torch.tensor([[-4.0, -3.5, -3.0, -2.0, -5.5], [-6.0, -7.0, -9.0, 100.0, 100.0]])
COV_A = torch.tensor([[2.0, 2.0, 2.0, 2.0, -2.0], [-2.0, -2.0, -2.0, 7.0, 7.0]])
COV_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
WINDOW = [(0, 0), (0, 1), (1, 0), (1, 1)]  # the flat indices 0, 1, 5, 6 in row-major order


def _clip_cov(lp_values=COV_LP, adv=COV_A, mask=COV_MASK, ratio=0.25):
    lp = lp_values.clone().requires_grad_(True)
    old = lp_values.clone()
    old[0, 2] -= math.log(1.5)  # t3: ratio 1.5 > 1 + 0.2 with A > 0, so the PPO clip cuts it
    loss, m = get_policy_loss_fn("clip_cov")(lp, old, adv, mask, agg=TOKEN_MEAN, clip_ratio_low=0.2,
                                             clip_ratio_high=0.2, clip_cov_ratio=ratio, clip_cov_lb=1.0,
                                             clip_cov_ub=5.0)
    loss.backward()
    return loss, m, lp.grad


def test_clip_cov_detaches_exactly_k_window_tokens_and_keeps_the_value():
    torch.manual_seed(1234)
    loss, m, grad = _clip_cov()
    # no detach changes the value: -2 -2 -2.4 -2 +2 +2 +2 +2 over 8 tokens
    assert loss.item() == pytest.approx(-0.4 / 8, rel=1e-5)
    # without detaching: -A / 8 everywhere except the clipped t3 (0) and the padding (0)
    plain = torch.tensor([[-0.25, -0.25, 0.0, -0.25, 0.25], [0.25, 0.25, 0.25, 0.0, 0.0]])
    lost = [(i, j) for i in range(2) for j in range(5) if plain[i, j] != 0 and grad[i, j] == 0]
    assert len(lost) == 2  # max(1, int(0.25 * 8))
    assert set(lost) <= set(WINDOW)
    for i, j in set(itertools.product(range(2), range(5))) - set(lost):
        assert grad[i, j].item() == pytest.approx(plain[i, j].item())
    assert m["clip_cov_frac"].item() == pytest.approx(2 / 8)
    assert m["clipfrac"].item() == pytest.approx(1 / 8)


def test_clip_cov_draws_from_the_global_torch_generator():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    order = torch.randperm(4)  # what the loss will draw over its 4 window candidates
    torch.set_rng_state(state)
    _, _, grad = _clip_cov()
    expected = {WINDOW[int(i)] for i in order[:2]}
    assert {(i, j) for i, j in WINDOW if grad[i, j] == 0} == expected
    # a restored generator state (a resumed checkpoint) draws the same tokens again
    torch.set_rng_state(state)
    _, _, again = _clip_cov()
    assert torch.equal(grad, again)


def test_clip_cov_fewer_candidates_than_k_detaches_all_of_them():
    torch.manual_seed(0)
    _, m, grad = _clip_cov(ratio=1.0)  # k = 8 but only 4 tokens sit in the window
    for i, j in WINDOW:
        assert grad[i, j].item() == 0.0
    assert grad[0, 3].item() == pytest.approx(-0.25) and grad[1, 2].item() == pytest.approx(0.25)
    assert grad[0, 4].item() == pytest.approx(0.25)  # cov exactly at the lower bound stays trainable
    assert m["clip_cov_frac"].item() == pytest.approx(4 / 8)


def _kl_cov(ratio, coef=0.5, adv=COV_A):
    lp = COV_LP.clone().requires_grad_(True)
    delta = torch.tensor([[0.1, 0.0, 0.0, 0.2, 0.0], [0.0, 0.0, -0.1, 0.0, 0.0]])  # log pi - log pi_old
    loss, m = get_policy_loss_fn("kl_cov")(lp, COV_LP - delta, adv, COV_MASK, agg=TOKEN_MEAN,
                                           kl_cov_ratio=ratio, kl_cov_coef=coef)
    loss.backward()
    return loss, m, lp.grad


def test_kl_cov_penalises_the_top_covariance_tokens():
    loss, m, grad = _kl_cov(ratio=0.25)  # k = 2: t8 (cov 8) and t4 (cov 6); the ratio clip plays no part
    # -A r, plus 0.5 |delta| on t4 and t8:
    #   -2 e^0.1 | -2 | -2 | -2 e^0.2 + 0.1 | 2 | 2 | 2 | 2 e^-0.1 + 0.05
    terms = [-2.2103418, -2.0, -2.0, -2.3428055, 2.0, 2.0, 2.0, 1.8596748]
    assert loss.item() == pytest.approx(sum(terms) / 8, rel=1e-6)
    assert loss.item() == pytest.approx(-0.0866841, rel=1e-5)
    # d/dlogp: -A r, plus 0.5 sign(delta) where penalised, / 8; t1 has delta != 0 but is not penalised
    expected = torch.tensor([[-0.2762927, -0.25, -0.25, -0.2428507, 0.25], [0.25, 0.25, 0.1637094, 0.0, 0.0]])
    assert torch.allclose(grad, expected, atol=1e-6)
    assert m["kl_cov_frac"].item() == pytest.approx(2 / 8)


def test_kl_cov_takes_at_least_one_token():
    _, m, grad = _kl_cov(ratio=2e-3)  # int(0.016) = 0 -> 1: only t8, the largest covariance
    assert m["kl_cov_frac"].item() == pytest.approx(1 / 8)
    assert grad[1, 2].item() == pytest.approx(0.1637094, abs=1e-6)
    assert grad[0, 3].item() == pytest.approx(-2 * math.exp(0.2) / 8, rel=1e-6)  # t4 no longer penalised


@pytest.mark.parametrize("name,params", [
    ("sapo", {"tau_pos": 1.0, "tau_neg": 1.05}),
    # lb < 0 puts every Cov_t = 0 token in the window: detaching them must still leave the gradient 0
    ("clip_cov", {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_cov_ratio": 1.0, "clip_cov_lb": -1.0,
                  "clip_cov_ub": 5.0}),
    ("kl_cov", {"kl_cov_ratio": 1.0, "kl_cov_coef": 1.0}),
    ("ppo", {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "dual_clip_c": 3.0}),
])
def test_equal_reward_groups_give_zero_gradient(name, params):
    """Groups whose rewards are all equal have A = 0 on every token: nothing to learn, whatever the ratios."""
    lp = COV_LP.clone().requires_grad_(True)
    old = COV_LP - torch.tensor([[0.3, -0.2, 0.0, 1.0, -1.0], [0.5, 0.0, -0.4, 9.0, 9.0]])
    torch.manual_seed(0)
    loss, m = get_policy_loss_fn(name)(lp, old, torch.zeros(2, 5), COV_MASK, agg=TOKEN_MEAN, **params)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(lp.grad, torch.zeros(2, 5))
    assert all(torch.isfinite(v).all() for v in m.values())
    if name == "kl_cov":
        assert m["kl_cov_frac"].item() == 0.0  # Cov_t = 0 everywhere: no token is eligible for the penalty


@pytest.mark.parametrize("overrides,key", [
    (["actor.policy_loss.tau_pos=0"], "actor.policy_loss.tau_pos"),
    (["actor.policy_loss.clip_cov_ratio=0"], "actor.policy_loss.clip_cov_ratio"),
    (["actor.policy_loss.kl_cov_ratio=1.5"], "actor.policy_loss.kl_cov_ratio"),
    (["actor.policy_loss.clip_cov_lb=5", "actor.policy_loss.clip_cov_ub=5"], "actor.policy_loss.clip_cov_lb"),
    (["actor.policy_loss.kl_cov_coef=-1"], "actor.policy_loss.kl_cov_coef"),
])
def test_new_loss_params_are_validated(overrides, key):
    from orchestrator.config import ConfigError, compose_config, validate_config

    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(overrides), check_files=False)
    assert err.value.key == key


def test_new_algorithms_compose_with_their_loss():
    from orchestrator.config import compose_config, validate_config

    for algo, agg in (("sapo", "seq-mean-token-mean"), ("clip_cov", "token-mean"), ("kl_cov", "token-mean")):
        cfg = validate_config(compose_config([f"algorithm={algo}"]), check_files=False)
        assert (cfg.actor.policy_loss.name, cfg.actor.loss_agg_mode) == (algo, agg)
        policy_loss_params(algo, dict(cfg.actor.policy_loss))  # every bound key is present


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
