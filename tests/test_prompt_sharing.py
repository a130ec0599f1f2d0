"""Prompt sharing (workers/engines/prompt_sharing.py): a family's prompt computed once, outputs and gradients
unchanged, and the planner's budget is what the forward then packs. On the plain HF model, no processes."""
from __future__ import annotations

import pytest
import torch

from test_fsdp2_engine import family_rows
from workers.engines.fsdp2.forward import causal_lm_forward
from workers.engines.micro_batches import plan_family_rows
from workers.engines.prompt_sharing import FamilyPacker, prompt_families, row_spans, share_prompts

PW, RW = 12, 16
FAMILIES = [(5, [7, 1, 16, 3]), (12, [2, 16, 9]), (1, [4]), (3, [11, 1, 6, 14, 2])]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from workers.engines.fsdp2.build import hf_attention

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation=hf_attention("varlen"))
    return Qwen2ForCausalLM(cfg)


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}


def _run(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    out = causal_lm_forward(model, batch, CPU, temperature=0.7, with_entropy=True, **kw)
    mask = batch["response_mask"].float()
    weights = torch.linspace(-1.0, 2.0, mask.numel()).view_as(mask)  # every cell its own weight
    ((out["log_probs"] * weights * mask).sum() + 0.1 * (out["entropy"] * mask).sum()).backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_a_family_becomes_one_row_that_holds_its_prompt_once():
    batch = family_rows(FAMILIES, PW, RW, seed=1)
    shared = share_prompts(_inputs(batch), PW, RW, max_row_tokens=None)
    assert shared.family.tolist() == [0] * 4 + [1] * 3 + [2] + [3] * 5
    # prompt once + every response: A 5+27, B 12+27, lone 1+4, D 3+34 -> width 39 over 4 rows
    assert shared.inputs["input_ids"].shape == (4, 39)
    # compacted, the 13 rows would run at their longest real length, 12 + 16: 364 cells against 156
    assert int(batch["attention_mask"].sum(-1).max()) == 28
    # row 1 (family A's 1-token response): token 0 is predicted at A's last prompt cell, nothing else is valid
    assert shared.column[1, 0] == 4 and shared.valid[1].tolist() == [True] + [False] * (RW - 1)
    # a response never attends to a sibling's tokens: row 0's cells (5..11) are masked for row 1 (cell 12)
    assert not shared.inputs["attention_mask"][0, 0, 12, 5:12].any()
    assert shared.inputs["attention_mask"][0, 0, 12, :5].all()


def test_shared_log_probs_entropy_and_gradients_equal_the_padded_path(model):
    batch = family_rows(FAMILIES, PW, RW, seed=2)
    real = batch["response_mask"].bool()
    padded, padded_grads = _run(model, batch)
    # 20 cuts families A, B and D into several packed rows; varlen runs the family rows as one sequence
    for cap, varlen in ((None, False), (20, False), (None, True), (20, True)):
        out, grads = _run(model, batch, remove_padding=True, share=True, max_row_tokens=cap, varlen=varlen)
        for key in ("log_probs", "entropy"):
            assert (out[key] - padded[key])[real].abs().max() <= 1e-5, (cap, varlen, key)
            assert not out[key][~real].any()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, padded_grads[name], atol=1e-5, rtol=0.0, msg=lambda m, n=name: f"{n}: {m}")


def test_nothing_shared_or_not_the_rollout_layout_runs_compacted():
    distinct = family_rows([(5, [3]), (4, [2]), (6, [1])], PW, RW, seed=3)
    assert share_prompts(_inputs(distinct), PW, RW, None) is None
    holed = family_rows(FAMILIES, PW, RW, seed=3)
    holed["attention_mask"][0, PW + 2] = 0  # a masked cell inside a response
    assert row_spans(holed["attention_mask"], PW) is None
    assert share_prompts(_inputs(holed), PW, RW, None) is None


def test_the_same_tokens_at_other_positions_are_not_one_prompt():
    batch = family_rows([(5, [3, 4])], PW, RW, seed=4)
    batch["position_ids"][1] += 1
    assert prompt_families(batch["input_ids"], batch["attention_mask"], batch["position_ids"], PW).tolist() == [0, 1]


@pytest.mark.parametrize("packed", [False, True])
def test_the_planner_keeps_families_together_and_its_budget_is_what_the_forward_packs(packed):
    batch = family_rows(FAMILIES + [(7, [9, 9, 9])], PW, RW, seed=5)
    start, responses = row_spans(batch["attention_mask"], PW)
    families = prompt_families(batch["input_ids"], batch["attention_mask"], batch["position_ids"], PW)
    plans = plan_family_rows(families, PW - start, responses, micro_batch_size=16, max_tokens=60, max_row_tokens=60,
                             packed=packed)
    assert sorted(torch.cat(plans).tolist()) == list(range(len(batch)))
    for plan in plans:
        sub = batch.index(plan)
        shared = share_prompts(_inputs(sub), PW, RW, max_row_tokens=60)
        if shared is None:
            lengths = sub["attention_mask"].sum(-1)
            cells = int(lengths.sum()) if packed else len(sub) * int(lengths.max())
        else:  # varlen runs each family row's tokens; padded, every row is as wide as the longest
            cells = int(shared.lengths.sum()) if packed else shared.inputs["input_ids"].numel()
        assert cells <= 60
    # family by family: a family is split only where the budget forces it
    runs = [families[p].tolist() for p in plans]
    flat = [f for run in runs for f in run]
    assert all(flat[i] == flat[i + 1] or flat[i + 1] not in flat[:i + 1] for i in range(len(flat) - 1))


def test_a_packer_cost_counts_packed_rows_times_the_longest():
    packer = FamilyPacker(max_row_tokens=10)
    packer.add(0, family=7, prompt=4, response=3)
    assert packer.cost_with(7, 4, 2) == 9  # joins the open row: 4 + 3 + 2
    assert packer.cost_with(7, 4, 5) == 2 * 9  # 4 + 3 + 5 > 10: a new row of 9
    packer.add(1, family=7, prompt=4, response=5)
    assert packer.rows == [[0], [1]] and packer.cost() == 18


def test_a_packed_packer_counts_the_tokens_a_varlen_forward_runs():
    packer = FamilyPacker(max_row_tokens=10, packed=True)
    packer.add(0, family=7, prompt=4, response=3)
    packer.add(1, family=8, prompt=1, response=1)
    assert packer.cost_with(7, 4, 2) == 7 + 2 + 2  # joins family 7's row: no padding to the longest
    assert packer.cost_with(9, 6, 2) == 9 + 8  # a new family row: its prompt too
    assert packer.cost() == 9  # against 2 x 7 = 14 cells padded


def test_computed_tokens_count_each_uids_prompt_once():
    from workers.engines.prompt_sharing import computed_tokens

    batch = family_rows([(5, [7, 1]), (12, [2, 16, 9]), (1, [4])], PW, RW, seed=6)
    uids = ["a", "a", "b", "b", "b", "c"]
    attended = int(batch["attention_mask"].sum())
    assert computed_tokens(batch["attention_mask"], PW, uids) == attended - 5 - 2 * 12
    assert computed_tokens(batch["attention_mask"], PW, [str(i) for i in range(6)]) == attended
