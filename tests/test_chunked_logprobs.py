"""Chunked log-probs and entropy equal the one-piece computation, values and gradients, with less fp32 memory."""
from __future__ import annotations

import pytest
import torch

from workers.engines.chunked_logprobs import chunked_log_probs
from workers.losses.entropy import entropy_from_logits


def _reference(logits, tokens, temperature):
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy_from_logits(logits.float() / temperature)


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_chunked_equals_one_piece_forward_and_backward(chunk):
    torch.manual_seed(0)
    logits = (torch.randn(3, 7, 50) * 4).requires_grad_(True)
    tokens = torch.randint(0, 50, (3, 7))
    weights = torch.randn(3, 7)
    got = chunked_log_probs(logits, tokens, temperature=0.7, with_entropy=True, chunk_positions=chunk)
    ((got["log_probs"] * weights).sum() + got["entropy"].sum()).backward()
    grad_chunked, logits.grad = logits.grad.clone(), None
    ref_lp, ref_ent = _reference(logits, tokens, 0.7)
    ((ref_lp * weights).sum() + ref_ent.sum()).backward()
    assert (got["log_probs"] - ref_lp).abs().max() <= 1e-6
    assert (got["entropy"] - ref_ent).abs().max() <= 1e-6
    assert (grad_chunked - logits.grad).abs().max() <= 1e-6


def test_bf16_logits_are_scored_in_fp32_and_entropy_is_optional():
    logits = torch.randn(2, 3, 11).to(torch.bfloat16)
    tokens = torch.randint(0, 11, (2, 3))
    got = chunked_log_probs(logits, tokens, temperature=1.0, with_entropy=False, chunk_positions=2)
    assert got.keys() == {"log_probs"} and got["log_probs"].dtype == torch.float32
    assert (got["log_probs"] - _reference(logits, tokens, 1.0)[0]).abs().max() <= 1e-6


def test_peak_fp32_memory_is_one_chunk(monkeypatch):
    """The fp32 copies made at once are one chunk's, not the whole [b, R, V]."""
    from workers.engines import chunked_logprobs

    sizes: list[int] = []
    score = chunked_logprobs._score

    def spy(logits, tokens, temperature, with_entropy):
        sizes.append(logits.shape[0])
        return score(logits, tokens, temperature, with_entropy)

    monkeypatch.setattr(chunked_logprobs, "_score", spy)
    chunked_log_probs(torch.randn(4, 10, 32), torch.randint(0, 32, (4, 10)), temperature=1.0, with_entropy=True,
                      chunk_positions=16)
    assert sizes == [16, 16, 8]
