"""Built-in rollout engine: token-for-token parity with HF, log-prob parity with the training forward,
sampling semantics, weight streaming, sleep/wake, config rejection and finished-row compaction.

Models are tiny Llama / Qwen2 configs with random init (no hub access); the whole file runs in seconds.
"""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from workers.batch import Batch
from workers.rollout.base import RolloutEngine, SamplingParams
from workers.rollout.builtin import BuiltinRolloutEngine, spec_from_hf_config
from workers.rollout.builtin.model import decode_attention
from workers.rollout.builtin.sampling import SamplerConfig, sample_next

VOCAB, PAD, STOP = 40, 0, 3
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    max_position_embeddings=128,
    initializer_range=0.3,  # peaked logits: greedy has no near-ties, samples repeat less
)
FAMILIES = {
    "qwen2": lambda **kw: (Qwen2Config(**{**TINY, **kw}), Qwen2ForCausalLM),
    "llama": lambda **kw: (LlamaConfig(**{**TINY, "head_dim": 24, **kw}), LlamaForCausalLM),
    "llama_bias_tied": lambda **kw: (
        LlamaConfig(**{**TINY, "attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True, **kw}),
        LlamaForCausalLM,
    ),
}


def make_hf(family: str = "qwen2", seed: int = 0, **overrides):
    config, cls = FAMILIES[family](**overrides)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # HF zero-inits biases; random biases make the bias mapping observable
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return model


def make_engine(hf, **kw) -> BuiltinRolloutEngine:
    opts = dict(dtype="float32", device="cpu", max_batch_size=16, max_seq_len=64, pad_token_id=PAD)
    engine = BuiltinRolloutEngine(hf.config, **{**opts, **kw})
    engine.load_weights(hf.state_dict().items())
    return engine


def prompts(batch: int = 4, width: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of different lengths (row i has i pad columns, at least one real token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, width), generator=g)
    mask = torch.ones_like(ids)
    for i in range(batch):
        pad = min(i, width - 1)
        mask[i, :pad] = 0
        ids[i, :pad] = PAD
    return ids, mask


def params(**kw) -> SamplingParams:
    base = dict(n=1, temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=12, seed=0, stop_token_ids=(STOP,))
    return SamplingParams(**{**base, **kw})


def hf_greedy(hf, ids, mask, max_new_tokens, stop=STOP) -> torch.Tensor:
    with torch.no_grad():
        out = hf.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=PAD
        )
    resp = out[:, ids.shape[1] :]
    return torch.cat([resp, torch.full((ids.shape[0], max_new_tokens - resp.shape[1]), PAD)], dim=1)


def hf_training_log_probs(hf, out: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """The training-style forward: log_softmax(logits / T) at the response tokens, position_ids = cumsum(mask) - 1."""
    mask = out["attention_mask"]
    with torch.no_grad():
        logits = hf(input_ids=out["input_ids"], attention_mask=mask, position_ids=mask.cumsum(-1) - 1).logits.float()
    p, r = out["prompts"].shape[1], out["responses"].shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : p + r - 1] / temperature, dim=-1)
    return logp.gather(-1, out["responses"][..., None]).squeeze(-1) * out["response_mask"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_matches_hf_generate_and_log_probs_match_training_forward(family):
    hf = make_hf(family)
    engine = make_engine(hf)
    ids, mask = prompts()
    stop = int(hf_greedy(hf, ids, mask, 12, stop=None)[1, 4])  # a token row 1 emits: it must end early
    out, stats = engine.generate_tensors(ids, mask, params(stop_token_ids=(stop, STOP)))
    assert torch.equal(out["responses"], hf_greedy(hf, ids, mask, 12, stop=[stop, STOP]))
    assert out["response_mask"][1].sum() <= 5
    assert (hf_training_log_probs(hf, out, 1.0) - out["rollout_log_probs"]).abs().max() <= 1e-5
    assert stats["tokens_generated"] == out["response_mask"].sum()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_sampled_log_probs_match_training_forward(family):
    hf = make_hf(family)
    engine = make_engine(hf)
    ids, mask = prompts()
    out, _ = engine.generate_tensors(ids, mask, params(n=2, temperature=0.7, top_p=0.9, top_k=20))
    assert (hf_training_log_probs(hf, out, 0.7) - out["rollout_log_probs"]).abs().max() <= 1e-5
    assert (out["rollout_log_probs"][out["response_mask"] == 0] == 0).all()
    assert (out["responses"][out["response_mask"] == 0] == PAD).all()


def test_output_layout_and_n_interleaving():
    hf = make_hf()
    engine = make_engine(hf)
    ids, mask = prompts()
    n = 3
    out, _ = engine.generate_tensors(ids, mask, params(n=n, temperature=1.0))
    rows = ids.shape[0] * n
    assert out["responses"].shape == (rows, 12)
    assert torch.equal(out["prompts"], ids.repeat_interleave(n, 0))
    assert torch.equal(out["input_ids"], torch.cat([out["prompts"], out["responses"]], 1))
    assert torch.equal(out["attention_mask"], torch.cat([mask.repeat_interleave(n, 0), out["response_mask"]], 1))
    assert torch.equal(out["position_ids"], (out["attention_mask"].cumsum(-1) - 1).clamp(min=0))
    assert out["rollout_log_probs"].dtype == torch.float32
    # Response mask is a prefix of ones; a stop token, if any, is the last unmasked token.
    lengths = out["response_mask"].sum(-1)
    assert torch.equal(out["response_mask"], (torch.arange(12)[None] < lengths[:, None]).to(out["response_mask"].dtype))
    ended = lengths < 12
    assert (out["responses"][ended, lengths[ended] - 1] == STOP).all()
    # Greedy with n samples: the n rows of a prompt are identical and equal the n=1 row.
    greedy_n, _ = engine.generate_tensors(ids, mask, params(n=n))
    greedy_1, _ = engine.generate_tensors(ids, mask, params())
    assert torch.equal(greedy_n["responses"], greedy_1["responses"].repeat_interleave(n, 0))


def test_seeded_determinism_and_top_k_1_is_greedy():
    engine = make_engine(make_hf())
    ids, mask = prompts()
    sample = params(n=2, temperature=1.0, max_new_tokens=16, stop_token_ids=())
    a, _ = engine.generate_tensors(ids, mask, sample)
    b, _ = engine.generate_tensors(ids, mask, sample)
    c, _ = engine.generate_tensors(ids, mask, params(n=2, temperature=1.0, max_new_tokens=16, stop_token_ids=(), seed=1))
    assert torch.equal(a["responses"], b["responses"])
    assert torch.equal(a["rollout_log_probs"], b["rollout_log_probs"])
    assert not torch.equal(a["responses"], c["responses"])
    assert not torch.equal(a["responses"][0::2], a["responses"][1::2]), "n samples of a prompt should differ"
    greedy, _ = engine.generate_tensors(ids, mask, params(n=2, max_new_tokens=16, stop_token_ids=()))
    top1, _ = engine.generate_tensors(ids, mask, params(n=2, temperature=0.8, top_k=1, max_new_tokens=16, stop_token_ids=()))
    tiny_p, _ = engine.generate_tensors(ids, mask, params(n=2, temperature=0.8, top_p=1e-6, max_new_tokens=16, stop_token_ids=()))
    assert torch.equal(top1["responses"], greedy["responses"])
    assert torch.equal(tiny_p["responses"], greedy["responses"])


def test_sampler_follows_softmax_and_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens, logp = sample_next(logits, SamplerConfig(temperature=0.5, top_k=-1, top_p=1.0), gen)
    probs = torch.softmax(logits[0] / 0.5, -1)
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert (freq - probs).abs().max() < 0.015
    assert torch.allclose(logp, probs.log()[tokens])
    tokens, logp = sample_next(logits, SamplerConfig(temperature=1.0, top_k=2, top_p=1.0), gen)
    assert set(tokens.tolist()) == {0, 1}
    assert torch.allclose(logp, torch.log_softmax(logits[0], -1)[tokens]), "log-probs are unfiltered"
    tokens, _ = sample_next(logits, SamplerConfig(temperature=1.0, top_k=-1, top_p=0.6), gen)
    assert set(tokens.tolist()) == {0, 1}  # p(0)=0.53 < 0.6, p(0)+p(1)=0.73 >= 0.6


def test_cpu_and_accelerator_attention_paths_agree():
    """The CPU matmul path (mask = padding) and the SDPA path used on accelerators (mask = valid) match."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 2, 8, generator=g), torch.randn(3, 2, 5, 8, generator=g), torch.randn(3, 2, 5, 8, generator=g))
    valid = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    valid[1, ..., :2] = False
    cpu = decode_attention(q, k, v, ~valid, on_cpu=True)
    sdpa = decode_attention(q, k, v, valid, on_cpu=False)
    assert torch.allclose(cpu, sdpa, atol=1e-6)
    assert torch.allclose(decode_attention(q, k, v, None, on_cpu=True), decode_attention(q, k, v, None, on_cpu=False), atol=1e-6)


def test_streamed_partial_weight_buckets_switch_outputs():
    old, new = make_hf(seed=0), make_hf(seed=7)
    engine = make_engine(old)
    ids, mask = prompts()
    before, _ = engine.generate_tensors(ids, mask, params())
    items = list(new.state_dict().items())
    for bucket in (items[:3], items[3:10], items[10:]):
        engine.load_weights(iter(bucket))
    after, _ = engine.generate_tensors(ids, mask, params())
    assert torch.equal(after["responses"], hf_greedy(new, ids, mask, 12))
    for name, tensor in items:  # hf_weight reads back through the fused layout
        assert torch.equal(engine.hf_weight(name), tensor), name
    assert not torch.equal(after["responses"], before["responses"])


def test_unknown_and_missing_weights_raise():
    hf = make_hf()
    engine = make_engine(hf)
    with pytest.raises(KeyError, match="model.layers.0.self_attn.rotary_mystery.weight"):
        engine.load_weights([("model.layers.0.self_attn.rotary_mystery.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match="model.norm.weight"):
        engine.load_weights([("model.norm.weight", torch.zeros(3))])
    fresh = BuiltinRolloutEngine(hf.config, dtype="float32", device="cpu", max_batch_size=4, max_seq_len=32, pad_token_id=PAD)
    fresh.load_weights([("model.norm.weight", torch.ones(64))])
    with pytest.raises(RuntimeError, match="never loaded"):
        fresh.generate_tensors(*prompts(), params())


def test_sleep_wake_round_trip_is_idempotent():
    engine = make_engine(make_hf())
    ids, mask = prompts()
    before, _ = engine.generate_tensors(ids, mask, params(temperature=1.0, n=2))
    assert engine.cache.allocated
    engine.sleep()
    engine.sleep()
    assert not engine.cache.allocated and engine.asleep
    engine.wake_up()
    engine.wake_up()
    assert engine.cache.allocated and not engine.asleep
    after, _ = engine.generate_tensors(ids, mask, params(temperature=1.0, n=2))
    assert torch.equal(before["responses"], after["responses"])
    engine.sleep()  # generating while asleep wakes the engine first
    again, _ = engine.generate_tensors(ids, mask, params(temperature=1.0, n=2))
    assert torch.equal(before["responses"], again["responses"])


def test_sleep_level_2_discards_weights_until_the_next_sync_rewrites_them():
    hf = make_hf()
    engine = make_engine(hf, sleep_level=2)
    ids, mask = prompts()
    before, _ = engine.generate_tensors(ids, mask, params(temperature=1.0, n=2))
    engine.sleep()
    assert all(p.numel() == 0 for p in engine.model.parameters())  # freed, not copied out
    with pytest.raises(RuntimeError, match="weights never loaded"):
        engine.generate_tensors(ids, mask, params())
    engine.wake_up(tags=["weights"])  # what the hybrid engine does before it streams the weights
    engine.load_weights(hf.state_dict().items())
    engine.wake_up(tags=["kv_cache"])
    after, _ = engine.generate_tensors(ids, mask, params(temperature=1.0, n=2))
    assert torch.equal(before["responses"], after["responses"])


def test_finished_rows_are_dropped_from_compute():
    hf = make_hf()
    ids, mask = prompts(batch=8, seed=3)
    greedy = hf_greedy(hf, ids, mask, 24)
    lengths = (greedy != PAD).cumsum(-1).argmax(-1) + 1
    assert lengths.min() < 24, "fixture: some row must hit the stop token"
    eager = make_engine(hf, compact_fraction=0.0)
    lazy = make_engine(hf, compact_fraction=2.0)  # never compacts
    out, stats = eager.generate_tensors(ids, mask, params(max_new_tokens=24))
    ref, ref_stats = lazy.generate_tensors(ids, mask, params(max_new_tokens=24))
    assert torch.equal(out["responses"], greedy) and torch.equal(ref["responses"], greedy)
    assert eager.last_step_rows[0] == 8 and min(eager.last_step_rows) < 8
    assert all(a >= b for a, b in zip(eager.last_step_rows, eager.last_step_rows[1:]))
    assert set(lazy.last_step_rows) == {8}
    assert stats["decode_row_steps"] < ref_stats["decode_row_steps"]
    assert stats["stop_token_stops"] == (out["response_mask"].sum(-1) < 24).sum()


def test_repetition_early_stop_and_stats():
    engine = make_engine(make_hf())
    ids, mask = prompts()
    out, stats = engine.generate_tensors(
        ids, mask, params(stop_token_ids=(), repetition_stop_window=3, repetition_stop_prob=1e-9)
    )
    assert (out["response_mask"].sum(-1) == 3).all()
    assert stats["repetition_stops"] == 4 and stats["length_stops"] == 0 and stats["stop_token_stops"] == 0
    out, stats = engine.generate_tensors(
        ids, mask, params(stop_token_ids=(), repetition_stop_window=3, repetition_stop_prob=0.999999)
    )
    assert stats["repetition_stops"] == 0 and stats["length_stops"] == 4
    for key in ("mean_response_length", "tokens_generated", "seconds", "tokens_per_s"):
        assert isinstance(stats[key], float)


def test_groups_larger_than_max_batch_size():
    hf = make_hf()
    engine = make_engine(hf, max_batch_size=4)
    ids, mask = prompts(batch=6)
    out, stats = engine.generate_tensors(ids, mask, params(n=2))
    assert out["responses"].shape == (12, 12)
    assert torch.equal(out["responses"], hf_greedy(hf, ids, mask, 12).repeat_interleave(2, 0))
    assert stats["num_sequences"] == 12
    with pytest.raises(ValueError, match="max_seq_len"):
        engine.generate_tensors(ids, mask, params(max_new_tokens=60))


def test_from_pretrained_and_batch_adapter(tmp_path):
    hf = make_hf("llama")
    hf.save_pretrained(tmp_path)
    engine = BuiltinRolloutEngine.from_pretrained(tmp_path, dtype="float32", device="cpu", max_batch_size=8, max_seq_len=64, pad_token_id=PAD)
    assert isinstance(engine, RolloutEngine)
    ids, mask = prompts()
    batch = Batch.from_dict(
        {"input_ids": ids, "attention_mask": mask}, {"uid": ["a", "b", "c", "d"]}, {"step": 5}
    )
    out = engine.generate(batch, params(n=2))
    assert len(out) == 8
    assert list(out["uid"]) == ["a", "a", "b", "b", "c", "c", "d", "d"]
    assert out.meta["step"] == 5 and out.meta["rollout_stats"]["num_sequences"] == 8
    for key in ("prompts", "responses", "response_mask", "input_ids", "attention_mask", "position_ids", "rollout_log_probs"):
        assert key in out
    assert torch.equal(out["responses"], hf_greedy(hf, ids, mask, 12).repeat_interleave(2, 0))


def test_unsupported_configs_are_rejected_naming_the_field():
    cfg = LlamaConfig(**TINY, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 64})
    with pytest.raises(ValueError, match="rope_type='llama3'"):
        spec_from_hf_config(cfg)
    cfg = Qwen2Config(**TINY, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    with pytest.raises(ValueError, match="layer_types"):
        spec_from_hf_config(cfg)
    with pytest.raises(ValueError, match="model_type"):
        spec_from_hf_config({"model_type": "gpt2"})
    qwen = spec_from_hf_config(Qwen2Config(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 5e5}))
    assert qwen.rope_theta == 5e5 and qwen.qkv_bias and not qwen.o_bias
    assert spec_from_hf_config({**TINY, "model_type": "llama", "rope_theta": 123.0}).rope_theta == 123.0


def test_bfloat16_runs():
    engine = make_engine(make_hf(), dtype="bfloat16")
    out, _ = engine.generate_tensors(*prompts(), params(temperature=1.0, n=2))
    assert out["rollout_log_probs"].dtype == torch.float32
    assert torch.isfinite(out["rollout_log_probs"]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_greedy_matches_cpu_and_sleep_moves_weights():
    hf = make_hf()
    cpu = make_engine(hf)
    gpu = make_engine(hf, device="cuda")
    ids, mask = prompts()
    want, _ = cpu.generate_tensors(ids, mask, params())
    got, _ = gpu.generate_tensors(ids, mask, params())
    assert torch.equal(want["responses"], got["responses"])
    assert (want["rollout_log_probs"] - got["rollout_log_probs"]).abs().max() < 1e-4
    gpu.sleep()
    assert gpu.model.embed.device.type == "cpu" and not gpu.cache.allocated
    gpu.wake_up()
    assert gpu.model.embed.device.type == "cuda"
    again, _ = gpu.generate_tensors(ids, mask, params())
    assert torch.equal(got["responses"], again["responses"])
