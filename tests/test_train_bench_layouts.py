"""`baton bench train --layouts` times four layouts of the same sequences; they must compute the same thing."""
from __future__ import annotations

import torch

from orchestrator.bench.train_bench import layout_inputs, make_batch


def _per_sequence_logits(model, inputs: list[dict[str, torch.Tensor]]) -> dict[tuple[int, ...], torch.Tensor]:
    """Logits of every real token, keyed by the sequence's token ids (each sequence once, whatever the layout)."""
    out: dict[tuple[int, ...], torch.Tensor] = {}
    for mb in inputs:
        with torch.no_grad():
            logits = model(**mb, use_cache=False).logits
        if "cu_seq_lens_q" in mb:  # varlen: one packed row, boundaries given
            bounds = mb["cu_seq_lens_q"].tolist()
            for a, b in zip(bounds, bounds[1:]):
                out[tuple(mb["input_ids"][0, a:b].tolist())] = logits[0, a:b]
        elif mb["attention_mask"].dim() == 2:  # padded / compacted: each row one sequence, left-aligned
            for row in range(len(logits)):
                n = int(mb["attention_mask"][row].sum())
                out[tuple(mb["input_ids"][row, :n].tolist())] = logits[row, :n]
        else:  # packed: positions restart at 0 where a sequence starts
            for row in range(len(logits)):
                starts = (mb["position_ids"][row] == 0).nonzero().flatten().tolist() + [logits.shape[1]]
                for a, b in zip(starts, starts[1:]):
                    out[tuple(mb["input_ids"][row, a:b].tolist())] = logits[row, a:b]
    return out


def test_padded_compacted_and_packed_layouts_hold_the_same_sequences_and_logits():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from workers.engines.fsdp2.build import hf_attention

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    model.set_attn_implementation(hf_attention("varlen"))  # as the bench builds it: SDPA where a mask is passed
    batch = make_batch(12, 6, 10, vocab=40, seed=3)
    layouts = layout_inputs(batch, micro_batch_size=4, budget=48)
    assert len(layouts["compacted"]) > len(layouts["padded"])  # the budget cut the rows finer
    results = {name: _per_sequence_logits(model, inputs) for name, inputs in layouts.items()}
    padded = results["padded"]
    assert len(padded) == 12
    for name in ("compacted", "packed (block-diagonal mask)", "packed (varlen)"):
        assert results[name].keys() == padded.keys(), name
        for seq, logits in padded.items():
            assert (results[name][seq] - logits).abs().max() <= 1e-5, name
