"""Varlen packing (workers/engines/varlen.py): a micro-batch as one sequence with row boundaries gives the padded
path's log-probs, entropy, values, scores and gradients; a model built with it stays correct on padded calls.
On the plain HF model, no processes (the 2-rank FSDP2 check is in test_fsdp2_engine.py)."""
from __future__ import annotations

import pytest
import torch

from test_fsdp2_engine import rollout_rows
from workers.engines import varlen
from workers.engines.compaction import compact
from workers.engines.fsdp2.build import hf_attention
from workers.engines.fsdp2.forward import causal_lm_forward, reward_forward, value_forward

CPU = torch.device("cpu")
PW, RW = 12, 16


def _model(cls_name: str, attention: str):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                   num_labels=1)
    model = getattr(transformers, cls_name)(cfg).eval()
    model.set_attn_implementation(hf_attention(attention))
    return model


def _skewed():
    return rollout_rows([12, 1, 7, 3, 2, 2, 1, 1], [16, 1, 16, 2, 1, 3, 2, 1], PW, RW, seed=2, extra=())


def test_pack_concatenates_rows_with_their_positions_and_boundaries():
    batch = _skewed()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    compacted = compact(inputs, PW)
    packed = varlen.pack(compacted)
    lengths = batch["attention_mask"].sum(-1)
    assert packed.inputs["cu_seq_lens_q"].tolist() == [0, *torch.cumsum(lengths, 0).tolist()]
    assert packed.inputs["max_length_q"] == 28 and "attention_mask" not in packed.inputs
    assert packed.inputs["input_ids"].shape == (1, int(lengths.sum()))
    # each row's tokens in order, positions restarting at 0 per row
    row3 = slice(int(lengths[:3].sum()), int(lengths[:4].sum()))
    assert packed.inputs["input_ids"][0, row3].tolist() == batch["input_ids"][3][batch["attention_mask"][3] > 0].tolist()
    assert packed.inputs["position_ids"][0, row3].tolist() == list(range(int(lengths[3])))
    # unpack inverts pack on the compacted layout, zeros at its padding
    back = packed.unpack(packed.inputs["input_ids"][..., None].float())[..., 0].long()
    assert torch.equal(back, compacted.inputs["input_ids"])


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["Qwen2ForCausalLM", "Qwen2ForTokenClassification", "Qwen2ForSequenceClassification"])
def test_varlen_equals_the_padded_path_and_runs_one_kernel_call_per_row(kind, monkeypatch):
    batch = _skewed()
    real = batch["response_mask"].bool()
    model = _model(kind, "varlen")
    calls = []
    per_row = varlen._per_row_sdpa
    monkeypatch.setattr(varlen, "_per_row_sdpa", lambda q, *a: calls.append(q.shape) or per_row(q, *a))

    def run(**kw):
        model.zero_grad(set_to_none=True)
        if kind == "Qwen2ForCausalLM":
            out = causal_lm_forward(model, batch, CPU, temperature=0.7, with_entropy=True, **kw)
            weights = torch.linspace(-1.0, 2.0, real.numel()).view_as(real)
            loss = (out["log_probs"] * weights * real).sum() + 0.1 * (out["entropy"] * real).sum()
        elif kind == "Qwen2ForTokenClassification":
            out = value_forward(model, batch, CPU, **kw)
            loss = (out["values"] * torch.linspace(-1.0, 2.0, real.numel()).view_as(real) * real).sum()
        else:
            out = reward_forward(model, batch, CPU, **kw)
            loss = (out["scores"] * torch.arange(1.0, 9.0)).sum()
        loss.backward()
        return out, _grads(model)

    padded, padded_grads = run()
    assert not calls  # a padded call goes through SDPA with its padding mask
    out, grads = run(remove_padding=True, varlen=True)
    assert len(calls) == 2 and all(shape[2] == int(batch["attention_mask"].sum()) for shape in calls)  # 2 layers
    for key, value in out.items():
        diff = value - padded[key]
        if diff.dim() == 2:
            assert diff[real].abs().max() <= 1e-5, key
            assert not value[~real].any(), key
        else:
            assert diff.abs().max() <= 1e-5, key
    assert grads.keys() == padded_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, padded_grads[name], atol=1e-5, rtol=0.0, msg=lambda m, n=name: f"{n}: {m}")


def test_a_varlen_model_keeps_padding_masks_on_padded_calls():
    """The model is built with the varlen kernel; a call with a 2-D mask must still mask padding (not run causal
    over pad cells), or a padded path on such a model would be silently wrong."""
    batch = _skewed()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        reference = _model("Qwen2ForCausalLM", "sdpa")(**inputs).logits
        logits = _model("Qwen2ForCausalLM", "varlen")(**inputs).logits
    real = batch["attention_mask"].bool()
    assert (logits - reference)[real].abs().max() <= 1e-5


def test_varlen_is_refused_without_padding_removal_and_hf_names_pass_through():
    from test_fsdp2_engine import engine_spec

    with pytest.raises(ValueError, match="varlen.*remove_padding"):
        engine_spec("x", "causal_lm", attn_implementation="varlen", remove_padding=False)
    assert hf_attention("sdpa") == "sdpa" and hf_attention("varlen") == varlen.ATTENTION_NAME


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash_varlen_kernel_matches_per_row_sdpa_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    lengths = [37, 1, 200, 5, 64]
    total = sum(lengths)
    q = torch.randn(1, 8, total, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(1, 2, total, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    flash, _ = varlen.varlen_attention(torch.nn.Module(), q, k, v, None, scaling=0.125, cu_seq_lens_q=cu,
                                       max_length_q=max(lengths))
    reference = varlen._per_row_sdpa(q.float(), k.float(), v.float(), cu.tolist(), 0.125)
    assert (flash.float() - reference).abs().max() <= 2e-2
