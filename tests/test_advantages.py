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
        "gae", "grpo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax", "rloo",
    ]
    critic = {n for n in list_advantages() if get_advantage_estimator(n).needs_critic}
    greedy = {n for n in list_advantages() if get_advantage_estimator(n).needs_baseline_rollout}
    groups = {n for n in list_advantages() if get_advantage_estimator(n).uses_groups}
    assert critic == {"gae"} and greedy == {"remax"}
    assert groups == {"grpo", "rloo", "reinforce_plus_plus_baseline"}
    with pytest.raises(ValueError, match="grpo, reinforce_plus_plus"):
        get_advantage_fn("gpro")


def test_params_are_picked_from_one_config_section():
    section = {"gamma": 1.0, "lam": 0.95, "norm_adv_by_std": True, "whiten_advantages": True, "eps": 1e-8}
    gae = {"gamma": 1.0, "lam": 0.95, "whiten_advantages": True, "eps": 1e-8}
    assert advantage_params("gae", section) == gae
    assert advantage_params("grpo", section) == {"norm_adv_by_std": True, "eps": 1e-8}
    assert advantage_params("rloo", section) == {}
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


# ---------------------------------------------------------------- degenerate batches

PARAMS = {
    "gae": {"gamma": 1.0, "lam": 1.0, "whiten_advantages": True, "eps": EPS},
    "grpo": {"norm_adv_by_std": True, "eps": EPS},
    "rloo": {},
    "reinforce_plus_plus": {"gamma": 1.0, "eps": EPS},
    "reinforce_plus_plus_baseline": {"eps": EPS},
    "remax": {},
}


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("case", ["single_row", "all_equal", "all_singletons"])
def test_degenerate_batches_are_finite_and_zero(name, case):
    if case == "single_row":
        scores, lengths, index = [1.0], [2], ["a"]
    elif case == "all_equal":
        scores, lengths, index = [1.0] * 4, [3, 1, 2, 3], ["a", "a", "b", "b"]
    else:
        scores, lengths, index = [0.0, 1.0, 5.0], [3, 1, 2], ["a", "b", "c"]
    data, mask = _outcome(scores, lengths, index)
    # gae with V = the return, remax with baseline = the score: zero advantage by construction
    values = torch.tensor(scores).unsqueeze(-1) * mask.float()
    data = AdvantageInputs(data.token_level_rewards, mask, data.index, values, torch.tensor(scores))
    adv, ret = compute_advantage(name, data, PARAMS[name])
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    # reinforce_plus_plus has no baseline: different scores in separate prompts stay different
    if not (name == "reinforce_plus_plus" and case == "all_singletons"):
        assert torch.allclose(adv, torch.zeros_like(adv), atol=1e-6), (name, case)
