"""Masked reductions and loss aggregation modes, against hand-computed values."""

import math

import pytest
import torch

from workers.losses.aggregation import AGG_MODES, LossAgg, aggregate, count_seqs, count_tokens
from workers.losses.masked import masked_mean, masked_sum, masked_var, masked_whiten

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0], [9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # lengths 3, 1 and an empty row


def test_masked_sum_mean_var():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(x, m).item() == pytest.approx(9.0)
    assert masked_mean(x, m).item() == pytest.approx(3.0)
    assert torch.allclose(masked_mean(x, m, dim=-1), torch.tensor([2.0, 5.0]))
    # population variance of {1, 3, 5} = (4 + 0 + 4) / 3
    assert masked_var(x, m).item() == pytest.approx(8.0 / 3.0)
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0  # empty mask: 0, not NaN


def test_masked_whiten_hand_values_and_constant_input():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s = math.sqrt(8.0 / 3.0 + 1e-8)
    expected = torch.tensor([[-2.0 / s, 0.0, 0.0], [2.0 / s, 0.0, 0.0]])
    assert torch.allclose(masked_whiten(x, m, eps=1e-8), expected, atol=1e-6)
    const = masked_whiten(torch.full((2, 3), 7.0), torch.ones(2, 3), eps=1e-8)
    assert torch.equal(const, torch.zeros(2, 3))
    with pytest.raises(ValueError):
        masked_whiten(x, m, eps=0.0)


def test_counts():
    assert count_tokens(MASK) == 4.0
    assert count_seqs(MASK) == 2.0  # the empty row is not a sequence


@pytest.mark.parametrize(
    "mode,norm,expected",
    [
        ("token-mean", None, (1 + 2 + 3 + 4) / 4),
        ("token-sum", None, 1 + 2 + 3 + 4),
        ("seq-mean-token-sum", None, (6 + 4) / 2),
        ("seq-mean-token-mean", None, (2 + 4) / 2),
        ("seq-mean-token-sum-norm", 3.0, (6 / 3 + 4 / 3) / 2),
    ],
)
def test_modes_local_counts(mode, norm, expected):
    assert aggregate(LOSS, MASK, mode, norm_constant=norm).item() == pytest.approx(expected)


def test_global_counts_override_local():
    assert aggregate(LOSS, MASK, "token-mean", global_tokens=8.0).item() == pytest.approx(10 / 8)
    assert aggregate(LOSS, MASK, "seq-mean-token-sum", global_seqs=5.0).item() == pytest.approx(10 / 5)
    agg = LossAgg("seq-mean-token-mean", global_tokens=None, global_seqs=4.0, norm_constant=None)
    assert agg.reduce(LOSS, MASK).item() == pytest.approx(6 / 4)


def test_lossagg_validation():
    with pytest.raises(ValueError, match="token-mean"):  # the message lists the known modes
        LossAgg("token_mean", None, None, None)
    with pytest.raises(ValueError, match="norm_constant"):
        LossAgg("seq-mean-token-sum-norm", None, None, None)
    with pytest.raises(ValueError, match="norm_constant"):
        LossAgg("token-mean", None, None, 4.0)
    with pytest.raises(ValueError, match="global_tokens"):
        LossAgg("token-mean", -1.0, None, None)


def test_degenerate_empty_minibatch_gives_zero_not_nan():
    empty = torch.zeros(2, 3)
    for mode, norm in [("token-mean", None), ("token-sum", None), ("seq-mean-token-mean", None),
                       ("seq-mean-token-sum-norm", 3.0)]:
        assert aggregate(LOSS[:2], empty, mode, norm_constant=norm).item() == 0.0
        agg = LossAgg(mode, global_tokens=0.0, global_seqs=0.0, norm_constant=norm)  # as LossNorm may carry
        assert agg.reduce(LOSS[:2], empty).item() == 0.0


def test_junk_on_padding_does_not_leak():
    junk = torch.tensor([[1.0, float("nan"), float("inf")]])
    mask = torch.tensor([[1, 0, 0]])
    for mode, norm in [("token-mean", None), ("seq-mean-token-sum", None), ("seq-mean-token-sum-norm", 2.0)]:
        expected = 0.5 if norm else 1.0
        assert aggregate(junk, mask, mode, norm_constant=norm).item() == expected


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_contributions_sum_to_full_batch(mode):
    """Gradient accumulation over micro-batches (and DP ranks) reproduces the mini-batch loss and grads."""
    g = torch.Generator().manual_seed(0)
    lengths = [5, 3, 1, 0, 4, 2, 5, 1]
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    base = torch.randn(len(lengths), 5, generator=g)
    norm = 5.0 if mode == "seq-mean-token-sum-norm" else None

    full_x = base.clone().requires_grad_(True)
    full = aggregate(full_x, mask, mode, norm_constant=norm)
    full.backward()

    acc_x = base.clone().requires_grad_(True)
    agg = LossAgg(mode, global_tokens=count_tokens(mask), global_seqs=count_seqs(mask), norm_constant=norm)
    total = torch.zeros(())
    # two "ranks" x uneven micro-batches: [0:2], [2:3] on rank 0; [3:6], [6:8] on rank 1
    for lo, hi in [(0, 2), (2, 3), (3, 6), (6, 8)]:
        part = agg.reduce(acc_x[lo:hi], mask[lo:hi])
        part.backward()
        total = total + part.detach()
    assert total.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(acc_x.grad, full_x.grad, atol=1e-7)


def test_token_sum_ignores_global_counts_and_splits_exactly():
    """token-sum has no divisor: each micro-batch's own sum is its share, whatever counts the engine passes."""
    agg = LossAgg("token-sum", global_tokens=100.0, global_seqs=50.0, norm_constant=None)
    assert agg.reduce(LOSS, MASK).item() == pytest.approx(10.0)
    assert agg.reduce(LOSS[:1], MASK[:1]).item() + agg.reduce(LOSS[1:], MASK[1:]).item() == pytest.approx(10.0)
    x = LOSS.clone().requires_grad_(True)
    agg.reduce(x, MASK).backward()
    assert torch.equal(x.grad, MASK.to(torch.float32))  # d sum / d token = 1 on valid tokens, 0 elsewhere
    with pytest.raises(ValueError, match="norm_constant"):
        LossAgg("token-sum", None, None, 4.0)


def test_loss_norm_constant_overrides_max_new_tokens():
    from orchestrator.config import ConfigError, compose_config, validate_config
    from workers.batch import Batch
    from workers.engines import LossNorm
    from workers.roles.actor_loss import actor_norm_constant, make_actor_loss

    base = ["actor.loss_agg_mode=seq-mean-token-sum-norm", "rollout.max_new_tokens=8",
            "actor.policy_loss.name=reinforce", "actor.use_kl_loss=false"]
    assert actor_norm_constant(validate_config(compose_config(base), check_files=False)) == 8.0
    cfg = validate_config(compose_config(base + ["actor.loss_norm_constant=2.5"]), check_files=False)
    assert actor_norm_constant(cfg) == 2.5

    # reinforce: loss_mat = -A * log pi; rows' token sums 6 and 4 (A = -1, log pi = LOSS), / 2.5, mean of 2 seqs
    loss_fn = make_actor_loss(cfg.actor, norm_constant=actor_norm_constant(cfg))
    mb = Batch.from_dict({"response_mask": MASK[:2], "old_log_probs": LOSS[:2], "advantages": -torch.ones(2, 3)})
    loss, _ = loss_fn({"log_probs": LOSS[:2]}, mb, LossNorm(global_tokens=4.0, global_seqs=2.0, dp_size=1))
    assert loss.item() == pytest.approx((6 / 2.5 + 4 / 2.5) / 2)

    for bad in ("0", "-3"):
        with pytest.raises(ConfigError) as err:
            validate_config(compose_config([f"actor.loss_norm_constant={bad}"]), check_files=False)
        assert err.value.key == "actor.loss_norm_constant"
