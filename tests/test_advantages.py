"""Advantage estimators and their registry, against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from orchestrator.advantages import (
    AdvantageInputs,
    advantage_params,
    compute_advantage,
    get_advantage_estimator,
    get_advantage_fn,
    list_advantages,
    scores_to_token_level,
)

EPS = 1e-6


def _inputs(rewards, mask, index=None, values=None, baseline=None):
    t = lambda x: None if x is None else torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return AdvantageInputs(
        token_level_rewards=t(rewards),
        response_mask=torch.tensor(mask),
        index=None if index is None else np.array(index, dtype=object),
        values=t(values),
        baseline_scores=t(baseline),
    )


def _outcome(scores, lengths, index, r=3):
    """One score per response, on its last valid token, responses of different lengths."""
    mask = torch.tensor([[1] * n + [0] * (r - n) for n in lengths])
    rewards = scores_to_token_level(torch.tensor(scores), mask)
    return AdvantageInputs(rewards, mask, np.array(index, dtype=object), None, None), mask


# ---------------------------------------------------------------- registry


def test_registry_names_flags_and_typo():
    assert list_advantages() == [
        "gae", "gpg", "grpo", "grpo_passk", "opd", "opo", "reinforce_plus_plus", "reinforce_plus_plus_baseline",
        "remax", "rloo",
    ]
    critic = {n for n in list_advantages() if get_advantage_estimator(n).needs_critic}
    greedy = {n for n in list_advantages() if get_advantage_estimator(n).needs_baseline_rollout}
    groups = {n for n in list_advantages() if get_advantage_estimator(n).uses_groups}
    on_policy = {n for n in list_advantages() if get_advantage_estimator(n).on_policy_only}
    assert critic == {"gae"} and greedy == {"remax"} and on_policy == {"opo"}
    assert groups == {"grpo", "rloo", "reinforce_plus_plus_baseline", "gpg", "opo", "grpo_passk"}
    with pytest.raises(ValueError, match="grpo, grpo_passk, opd"):
        get_advantage_fn("gpro")


def test_params_are_picked_from_one_config_section():
    section = {"gamma": 1.0, "lam": 0.95, "norm_adv_by_std": True, "whiten_advantages": True, "eps": 1e-8}
    gae = {"gamma": 1.0, "lam": 0.95, "whiten_advantages": True, "eps": 1e-8}
    assert advantage_params("gae", section) == gae
    assert advantage_params("grpo", section) == {"norm_adv_by_std": True, "eps": 1e-8}
    assert advantage_params("rloo", section) == {}
    assert advantage_params("gpg", section) == {"norm_adv_by_std": True, "eps": 1e-8}
    assert advantage_params("opo", section) == {}
    assert advantage_params("grpo_passk", {**section, "passk_k": 4}) == {"k": 4}
    with pytest.raises(ValueError, match="eps"):
        advantage_params("reinforce_plus_plus", {"gamma": 1.0})


def test_scores_to_token_level():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]])
    out = scores_to_token_level(torch.tensor([1.0, 2.0, 3.0, 4.0]), mask)
    assert torch.equal(out, torch.tensor([[0, 0, 1.0], [2.0, 0, 0], [0, 0, 0], [0, 4.0, 0]]))


def test_inputs_validate_shapes():
    with pytest.raises(ValueError, match="index"):
        _inputs([[1.0, 0.0]], [[1, 1]], index=["a", "b"])


# ---------------------------------------------------------------- gae


def test_gae_three_steps_by_hand():
    # gamma = 0.9, lam = 0.8 (gamma*lam = 0.72)
    # row 0: r = [0, 0, 1], V = [0.5, 0.6, 0.7], V after the end = 0
    #   d2 = 1 - 0.7 = 0.3; d1 = 0.9*0.7 - 0.6 = 0.03; d0 = 0.9*0.6 - 0.5 = 0.04
    #   A2 = 0.3; A1 = 0.03 + 0.72*0.3 = 0.246; A0 = 0.04 + 0.72*0.246 = 0.21712
    # row 1 (length 2, padding holds junk): r = [0, 2], V = [1.0, 0.5]
    #   d1 = 2 - 0.5 = 1.5; d0 = 0.9*0.5 - 1.0 = -0.55; A0 = -0.55 + 0.72*1.5 = 0.53
    # row 2 (interior masked token is skipped): r = [0, _, 1], V = [0.5, _, 0.7]
    #   A2 = 0.3; d0 = 0.9*0.7 - 0.5 = 0.13; A0 = 0.13 + 0.72*0.3 = 0.346
    data = _inputs(
        rewards=[[0.0, 0.0, 1.0], [0.0, 2.0, 5.0], [0.0, 7.0, 1.0]],
        mask=[[1, 1, 1], [1, 1, 0], [1, 0, 1]],
        values=[[0.5, 0.6, 0.7], [1.0, 0.5, 9.0], [0.5, 9.0, 0.7]],
    )
    adv, ret = get_advantage_fn("gae")(data, gamma=0.9, lam=0.8, whiten_advantages=False, eps=EPS)
    exp_adv = torch.tensor([[0.21712, 0.246, 0.3], [0.53, 1.5, 0.0], [0.346, 0.0, 0.3]])
    exp_ret = torch.tensor([[0.71712, 0.846, 1.0], [1.53, 2.0, 0.0], [0.846, 0.0, 1.0]])
    assert torch.allclose(adv, exp_adv, atol=1e-6)
    assert torch.allclose(ret, exp_ret, atol=1e-6)

    white, ret_w = get_advantage_fn("gae")(data, gamma=0.9, lam=0.8, whiten_advantages=True, eps=EPS)
    valid = [0.21712, 0.246, 0.3, 0.53, 1.5, 0.346, 0.3]
    mean = sum(valid) / 7
    std = math.sqrt(sum((v - mean) ** 2 for v in valid) / 7 + EPS)
    assert white[1, 0].item() == pytest.approx((0.53 - mean) / std, rel=1e-5)
    assert white[1, 2].item() == 0.0 and white[2, 1].item() == 0.0
    assert torch.equal(ret_w, ret)  # returns use the raw advantages


def test_gae_needs_values():
    with pytest.raises(ValueError, match="values"):
        get_advantage_fn("gae")(_inputs([[1.0]], [[1]]), gamma=1.0, lam=1.0, whiten_advantages=False, eps=EPS)


# ---------------------------------------------------------------- grpo / dr.grpo / rloo

# group "a": [0.1, 1.1, 1.0, 0.1], mean 0.575, unbiased std sqrt(0.9075 / 3) = 0.55
# group "b": one sample; group "c": equal rewards. Rows interleaved, lengths differ.
SCORES = [0.1, 3.0, 1.1, 2.0, 1.0, 2.0, 0.1]
INDEX = ["a", "b", "a", "c", "a", "c", "a"]
LENGTHS = [3, 2, 1, 3, 2, 1, 3]


def test_grpo_and_dr_grpo():
    data, mask = _outcome(SCORES, LENGTHS, INDEX)
    adv, ret = get_advantage_fn("grpo")(data, norm_adv_by_std=True, eps=EPS)
    dev = [-0.475, 0.0, 0.525, 0.0, 0.425, 0.0, -0.475]
    expected = torch.tensor([d / (0.55 + EPS) for d in dev]).unsqueeze(-1) * mask
    assert torch.allclose(adv, expected, atol=1e-5)
    assert torch.equal(adv, ret)

    dr, _ = get_advantage_fn("grpo")(data, norm_adv_by_std=False, eps=EPS)
    assert torch.allclose(dr, torch.tensor(dev).unsqueeze(-1) * mask, atol=1e-6)
    # the difference: GRPO rescales each group by 1/std (here 1/0.55), Dr.GRPO does not
    assert torch.allclose(adv * 0.55, dr, atol=1e-5)


def test_rloo_leave_one_out_baseline():
    data, mask = _outcome(SCORES, LENGTHS, INDEX)
    adv, _ = get_advantage_fn("rloo")(data)
    # r_i - (2.3 - r_i) / 3 in group a; 0 for the single sample and the equal pair
    a = [0.1 - 2.2 / 3, 0.0, 1.1 - 1.2 / 3, 0.0, 1.0 - 1.3 / 3, 0.0, 0.1 - 2.2 / 3]
    assert torch.allclose(adv, torch.tensor(a).unsqueeze(-1) * mask, atol=1e-6)


def test_group_estimators_need_index():
    with pytest.raises(ValueError, match="index"):
        get_advantage_fn("rloo")(_inputs([[1.0]], [[1]]))


# ---------------------------------------------------------------- reinforce family


def test_reinforce_plus_plus_return_to_go_and_whitening():
    # gamma = 0.5. row 0: r = [0.2, 0, 1] -> G = [0.2 + 0.5*0.5, 0 + 0.5*1, 1] = [0.45, 0.5, 1]
    # row 1 (length 2): r = [0, -1] -> G = [-0.5, -1]
    data = _inputs([[0.2, 0.0, 1.0], [0.0, -1.0, 4.0]], [[1, 1, 1], [1, 1, 0]])
    adv, ret = get_advantage_fn("reinforce_plus_plus")(data, gamma=0.5, eps=EPS)
    assert torch.allclose(ret, torch.tensor([[0.45, 0.5, 1.0], [-0.5, -1.0, 0.0]]), atol=1e-6)
    # valid returns: mean 0.45 / 5 = 0.09; population var (0.36^2+0.41^2+0.91^2+0.59^2+1.09^2)/5 = 0.5324
    s = math.sqrt(0.5324 + EPS)
    expected = torch.tensor([[0.36 / s, 0.41 / s, 0.91 / s], [-0.59 / s, -1.09 / s, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_reinforce_plus_plus_baseline():
    # group a: scores [1, 0] -> centred [0.5, -0.5]; group b (single) -> 0
    # tokens (lengths 2, 1, 2): [0.5, 0.5 | -0.5 | 0, 0]: mean 0.1, population var 0.7 / 5 = 0.14
    data, mask = _outcome([1.0, 0.0, 0.5], [2, 1, 2], ["a", "a", "b"])
    adv, _ = get_advantage_fn("reinforce_plus_plus_baseline")(data, eps=EPS)
    s = math.sqrt(0.14 + EPS)
    expected = torch.tensor([[0.4 / s, 0.4 / s, 0.0], [-0.6 / s, 0.0, 0.0], [-0.1 / s, -0.1 / s, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_remax_greedy_baseline():
    # row 0: to-go [1, 1, 1] - 0.4; row 1 (KL-penalised tokens): to-go [0.4, 0.5] - 0.5
    data = _inputs([[0.0, 0.0, 1.0], [-0.1, 0.5, 3.0]], [[1, 1, 1], [1, 1, 0]], baseline=[0.4, 0.5])
    adv, ret = get_advantage_fn("remax")(data)
    assert torch.allclose(adv, torch.tensor([[0.6, 0.6, 0.6], [-0.1, 0.0, 0.0]]), atol=1e-6)
    assert torch.equal(adv, ret)
    with pytest.raises(ValueError, match="baseline_scores"):
        get_advantage_fn("remax")(_inputs([[1.0]], [[1]]))


# ---------------------------------------------------------------- gpg

# a: [1, 0, 0, 0] (mean 0.25, unbiased std 0.5); b: [1, 1] equal; c: a group of one; d: [0, 1, 1]
# (mean 2/3, unbiased std sqrt(1/3)). Zero-gradient samples: b's 2 and c's 1, so B = 10, M = 3,
# alpha = 10 / 7.
GPG_INDEX = ["a", "b", "d", "a", "c", "a", "d", "b", "a", "d"]
GPG_SCORES = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
GPG_LENGTHS = [4, 2, 3, 1, 4, 2, 3, 1, 4, 2]


def test_gpg_alpha_and_std_normalisation():
    data, mask = _outcome(GPG_SCORES, GPG_LENGTHS, GPG_INDEX, r=4)
    adv, ret = get_advantage_fn("gpg")(data, norm_adv_by_std=True, eps=EPS)
    # a: 10/7 * [0.75, -0.25] / 0.5 = [15/7, -5/7]; d: 10/7 * [-2/3, 1/3] * sqrt(3) = [-20, 10] / (7 sqrt 3)
    s3 = math.sqrt(3.0)
    rows = [15 / 7, 0.0, -20 / (7 * s3), -5 / 7, 0.0, -5 / 7, 10 / (7 * s3), 0.0, -5 / 7, 10 / (7 * s3)]
    assert torch.allclose(adv, torch.tensor(rows).unsqueeze(-1) * mask, atol=1e-5)
    assert torch.equal(adv, ret)

    # F_norm = 1: a: 10/7 * [0.75, -0.25] = [15/14, -5/14]; d: 10/7 * [-2/3, 1/3] = [-20/21, 10/21]
    flat, _ = get_advantage_fn("gpg")(data, norm_adv_by_std=False, eps=EPS)
    rows = [15 / 14, 0.0, -20 / 21, -5 / 14, 0.0, -5 / 14, 10 / 21, 0.0, -5 / 14, 10 / 21]
    assert torch.allclose(flat, torch.tensor(rows).unsqueeze(-1) * mask, atol=1e-6)


def test_gpg_without_zero_gradient_groups_is_grpo():
    # alpha = B / (B - 0) = 1: the same numbers as GRPO (groups a and d of the batch above)
    keep = [i for i, u in enumerate(GPG_INDEX) if u in ("a", "d")]
    data, _ = _outcome([GPG_SCORES[i] for i in keep], [GPG_LENGTHS[i] for i in keep],
                       [GPG_INDEX[i] for i in keep], r=4)
    gpg, _ = get_advantage_fn("gpg")(data, norm_adv_by_std=True, eps=EPS)
    grpo, _ = get_advantage_fn("grpo")(data, norm_adv_by_std=True, eps=EPS)
    assert torch.allclose(gpg, grpo, atol=1e-6)


def test_gpg_equal_scores_are_exactly_zero():
    # 0.1 three times: the float mean may miss 0.1 by an ulp; the group still counts as equal (A = 0, into M)
    data, mask = _outcome([0.1, 0.1, 0.1, 1.0, 0.0], [3, 2, 1, 2, 3], ["a", "a", "a", "b", "b"])
    adv, _ = get_advantage_fn("gpg")(data, norm_adv_by_std=True, eps=EPS)
    # B = 5, M = 3, alpha = 5/2; b: [0.5, -0.5] / sqrt(0.5) * 5/2 = +-5 / (2 sqrt 2)
    a = 5 / (2 * math.sqrt(2.0))
    assert torch.equal(adv[:3], torch.zeros_like(adv[:3]))
    assert torch.allclose(adv[3:], torch.tensor([[a, a, 0.0], [-a, -a, -a]]), atol=1e-5)


# ---------------------------------------------------------------- opo

# a: scores [1, 0, 0, 1], lengths [1, 4, 2, 3]: b = (1*1 + 3*1) / 10 = 0.4 (the plain mean would be 0.5)
# b: scores [2, 0.5], lengths [3, 1]: b = (6 + 0.5) / 4 = 1.625; plus an empty response (no token to hold
#    its score 9, so its score is 0 and its weight 0: the baseline is unchanged)
# c: equal scores [0.3, 0.3], lengths [2, 4]; d: a group of one
OPO_INDEX = ["a", "b", "a", "c", "d", "a", "b", "c", "a", "b"]
OPO_SCORES = [1.0, 2.0, 0.0, 0.3, 0.7, 0.0, 0.5, 0.3, 1.0, 9.0]
OPO_LENGTHS = [1, 3, 4, 2, 2, 2, 1, 4, 3, 0]


def test_opo_length_weighted_baseline():
    data, mask = _outcome(OPO_SCORES, OPO_LENGTHS, OPO_INDEX, r=4)
    adv, ret = get_advantage_fn("opo")(data)
    rows = [0.6, 0.375, -0.4, 0.0, 0.0, -0.4, -1.125, 0.0, 0.6, 0.0]
    assert torch.allclose(adv, torch.tensor(rows).unsqueeze(-1) * mask, atol=1e-6)
    assert torch.equal(adv, ret) and torch.isfinite(adv).all()
    # equal lengths: the length-weighted baseline is the group mean (Dr.GRPO's advantage)
    data, mask = _outcome([1.0, 0.0, 0.0, 1.0], [2, 2, 2, 2], ["a"] * 4, r=4)
    adv, _ = get_advantage_fn("opo")(data)
    dr, _ = get_advantage_fn("grpo")(data, norm_adv_by_std=False, eps=EPS)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]).unsqueeze(-1) * mask, atol=1e-6)
    assert torch.allclose(adv, dr, atol=1e-6)


def test_opo_config_is_strictly_on_policy():
    from orchestrator.config import ConfigError, compose_config, validate_config

    cfg = validate_config(compose_config(["algorithm=opo"]), check_files=False)
    assert cfg.actor.ppo_epochs == 1 and cfg.actor.ppo_mini_batch_size == cfg.data.train_batch_size
    assert not cfg.actor.use_kl_loss and not cfg.algorithm.use_kl_in_reward and cfg.actor.entropy_coeff == 0.0
    for overrides, key in ((["actor.ppo_epochs=2"], "actor.ppo_epochs"),
                           (["actor.ppo_mini_batch_size=16"], "actor.ppo_mini_batch_size")):
        with pytest.raises(ConfigError) as err:
            validate_config(compose_config(["algorithm=opo", *overrides]), check_files=False)
        assert err.value.key == key and "on-policy" in str(err.value)
    # the same overrides are fine for an estimator that is not on_policy_only
    validate_config(compose_config(["algorithm=grpo", "actor.ppo_epochs=2"]), check_files=False)


# ---------------------------------------------------------------- grpo_passk

# a: N=4, 3 wrong. k=2: Rbar = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5, sigma = 0.5,
#    A_pos = 0.5/0.5 = 1, A_neg = (0.5 - C(2,1)/C(3,1)) / 0.5 = (0.5 - 2/3) / 0.5 = -1/3
# b: N=3, 1 wrong. k=2: C(1,2) = 0, every pair holds a correct sample: Rbar = 1, sigma = 0 -> A = 0
# c: N=5, 3 wrong. k=2: Rbar = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7, sigma = sqrt(0.21) = 0.4582576,
#    A_pos = 0.3/sigma = 0.6546537, A_neg = (0.3 - C(2,1)/C(4,1)) / sigma = -0.2/sigma = -0.4364358
# e: N=2, all wrong: Rbar = 0, sigma = 0 -> A = 0
PK_INDEX = ["a", "b", "c", "a", "e", "c", "b", "a", "c", "e", "c", "b", "a", "c"]
PK_SCORES = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
PK_LENGTHS = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2]


def test_grpo_passk_analytic_advantages():
    data, mask = _outcome(PK_SCORES, PK_LENGTHS, PK_INDEX, r=4)
    adv, ret = get_advantage_fn("grpo_passk")(data, k=2)
    p, n = 0.6546537, -0.4364358
    rows = [1.0, 0.0, p, -1 / 3, 0.0, n, 0.0, -1 / 3, p, 0.0, n, 0.0, -1 / 3, n]
    assert torch.allclose(adv, torch.tensor(rows).unsqueeze(-1) * mask, atol=1e-6)
    assert torch.equal(adv, ret)
    # k = N for group a: a 4-subset always holds its correct sample -> no signal; groups smaller than k fail
    data4, _ = _outcome([1.0, 0.0, 0.0, 0.0], [1, 2, 3, 4], ["a"] * 4, r=4)
    adv4, _ = get_advantage_fn("grpo_passk")(data4, k=4)
    assert torch.equal(adv4, torch.zeros_like(adv4))
    with pytest.raises(ValueError, match=r"k=5 exceeds the 4 samples of prompt uid 'a'"):
        get_advantage_fn("grpo_passk")(data4, k=5)


def test_grpo_passk_with_k1_is_grpo_with_the_population_std():
    # k=1: Rbar = p (success rate), sigma = sqrt(p(1-p)), A_pos = (1-p)/sigma, A_neg = -p/sigma
    # a: p = 1/4 -> sqrt(3), -1/sqrt(3); b: p = 2/3 -> 1/sqrt(2), -sqrt(2); c: p = 2/5 -> 1.2247449, -0.8164966
    data, mask = _outcome(PK_SCORES, PK_LENGTHS, PK_INDEX, r=4)
    adv, _ = get_advantage_fn("grpo_passk")(data, k=1)
    s3, s2 = math.sqrt(3.0), math.sqrt(2.0)
    ap, an, bp, bn, cp, cn = s3, -1 / s3, 1 / s2, -s2, 1.2247449, -0.8164966
    rows = [ap, bn, cp, an, 0.0, cn, bp, an, cp, 0.0, cn, bp, an, cn]
    assert torch.allclose(adv, torch.tensor(rows).unsqueeze(-1) * mask, atol=1e-6)
    # GRPO divides by the unbiased std, sqrt(n/(n-1)) times the population one: a n=4, b n=3, c n=5
    grpo, _ = get_advantage_fn("grpo")(data, norm_adv_by_std=True, eps=EPS)  # eps keeps group e at 0/eps = 0
    size = {"a": 4, "b": 3, "c": 5, "e": 2}
    factor = torch.tensor([math.sqrt(size[u] / (size[u] - 1)) for u in PK_INDEX]).unsqueeze(-1)
    assert torch.allclose(adv, grpo * factor, atol=1e-5)


def test_grpo_passk_rejects_non_binary_scores():
    data, _ = _outcome([1.0, 0.0, 0.5, 1.0], [1, 2, 3, 1], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=r"0/1 rewards, but row 2 \(uid 'b'\) scored 0.5"):
        get_advantage_fn("grpo_passk")(data, k=1)


def test_grpo_passk_config_checks_k():
    from orchestrator.config import ConfigError, compose_config, validate_config

    cfg = validate_config(compose_config(["algorithm=grpo_passk"]), check_files=False)
    assert advantage_params("grpo_passk", dict(cfg.algorithm)) == {"k": 4}
    for overrides, key in ((["algorithm.passk_k=9"], "algorithm.passk_k"),  # rollout.n = 8
                           (["algorithm.passk_k=0"], "algorithm.passk_k"),
                           (["algorithm.use_kl_in_reward=true"], "algorithm.use_kl_in_reward")):
        with pytest.raises(ConfigError) as err:
            validate_config(compose_config(["algorithm=grpo_passk", *overrides]), check_files=False)
        assert err.value.key == key
    # passk_k is only checked for the estimator that reads it
    validate_config(compose_config(["algorithm=grpo", "algorithm.passk_k=9"]), check_files=False)


def test_gpg_config_is_plain_policy_gradient():
    from orchestrator.config import compose_config, validate_config

    cfg = validate_config(compose_config(["algorithm=gpg"]), check_files=False)
    assert cfg.algorithm.adv_estimator == "gpg" and cfg.actor.policy_loss.name == "reinforce"
    assert cfg.actor.loss_agg_mode == "token-mean" and not cfg.actor.use_kl_loss
    assert not cfg.algorithm.use_kl_in_reward and not get_advantage_estimator("gpg").needs_critic


# ---------------------------------------------------------------- degenerate batches

PARAMS = {
    "gae": {"gamma": 1.0, "lam": 1.0, "whiten_advantages": True, "eps": EPS},
    "grpo": {"norm_adv_by_std": True, "eps": EPS},
    "rloo": {},
    "reinforce_plus_plus": {"gamma": 1.0, "eps": EPS},
    "reinforce_plus_plus_baseline": {"eps": EPS},
    "remax": {},
    "gpg": {"norm_adv_by_std": True, "eps": EPS},
    "opo": {},
    "grpo_passk": {"k": 1},
}


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("case", ["single_row", "all_equal", "all_singletons"])
def test_degenerate_batches_are_finite_and_zero(name, case):
    if case == "single_row":
        scores, lengths, index = [1.0], [2], ["a"]
    elif case == "all_equal":
        scores, lengths, index = [1.0] * 4, [3, 1, 2, 3], ["a", "a", "b", "b"]
    else:
        scores, lengths, index = [0.0, 1.0, 1.0], [3, 1, 2], ["a", "b", "c"]  # 0/1: grpo_passk takes them too
    data, mask = _outcome(scores, lengths, index)
    # gae with V = the return, remax with baseline = the score: zero advantage by construction
    values = torch.tensor(scores).unsqueeze(-1) * mask.float()
    data = AdvantageInputs(data.token_level_rewards, mask, data.index, values, torch.tensor(scores))
    adv, ret = compute_advantage(name, data, PARAMS[name])
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    # reinforce_plus_plus has no baseline: different scores in separate prompts stay different
    if not (name == "reinforce_plus_plus" and case == "all_singletons"):
        assert torch.allclose(adv, torch.zeros_like(adv), atol=1e-6), (name, case)
