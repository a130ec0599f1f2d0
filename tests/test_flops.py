"""The FLOP model behind `perf/mfu/<phase>`: parameter count from the config, 2N forward / 6N update."""
from __future__ import annotations

import pytest

from orchestrator.tracking.flops import PhaseFlops, matmul_params


def qwen2_matmul_params_by_hand(h: int, inter: int, layers: int, heads: int, kv_heads: int, vocab: int) -> int:
    kv = h // heads * kv_heads
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q (bias), k and v (bias), o (no bias)
    mlp = 3 * h * inter
    norms = 2 * h
    return layers * (attention + mlp + norms) + h + vocab * h  # final norm, LM head (once, tied or not)


@pytest.mark.parametrize("tied", [True, False])
def test_matmul_params_leave_out_the_embedding_lookup_and_count_the_head_once(tmp_path, tied):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=57)
    Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=tied)).save_pretrained(tmp_path)
    expected = qwen2_matmul_params_by_hand(32, 80, 3, 4, 2, 57)
    assert matmul_params(tmp_path) == expected


def test_mfu_counts_six_n_for_updates_and_two_n_for_forwards():
    flops = PhaseFlops(params=1000, peak_flops_per_rank=1e6)
    assert flops.mfu("update_actor", 100.0, ranks=2) == pytest.approx(6 * 1000 * 100 / 2e6)
    assert flops.mfu("update_critic", 100.0, ranks=1) == pytest.approx(6 * 1000 * 100 / 1e6)
    assert flops.mfu("ref", 100.0, ranks=2) == pytest.approx(2 * 1000 * 100 / 2e6)
    assert flops.mfu("generate", float("nan"), ranks=2) is None
    assert PhaseFlops(params=1000, peak_flops_per_rank=None).mfu("ref", 100.0, ranks=2) is None
