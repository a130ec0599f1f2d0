"""The built-in engine's fused C++ CPU forward (rollout.kernels=cpp) against the torch path and HF.

The extension is compiled once per machine (~30 s, cached under TORCH_EXTENSIONS_DIR); every
test here uses the real compiled kernels. Models are tiny random Qwen2 configs with head_dim 32
(the kernels need head_dim a multiple of two vectors: 32 floats with AVX-512, 16 with AVX2).

Log-prob tolerance is 1e-4, not the torch path's 1e-5: oneDNN's packed GEMMs and the fused
loops sum in a different order than MKL and torch's kernels. With these peaked test models
(logits of tens) that moves log-probs by up to ~6e-5 (relative ~1e-5); tokens stay identical.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2ForCausalLM

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import ConfigError, compose_config, validate_config
from orchestrator.entry import train
from orchestrator.tracking import read_metrics_jsonl
from test_builtin_rollout import PAD
from test_builtin_rollout import make_hf as make_builtin_hf
from test_builtin_rollout import params as builtin_params
from test_builtin_rollout import prompts as builtin_prompts
from workers.rollout.base import SamplingParams
from workers.rollout.builtin import BuiltinRolloutEngine
from workers.rollout.builtin.cpu_kernels import (CppKernelsUnavailable, FusedCpuDecoder, bf16_matmul_supported,
                                                  load_extension)
from workers.rollout.builtin.kv_cache import KVCache

pytestmark = pytest.mark.timeout(300)
# oneDNN packs bf16 weights only on CPUs with AVX-512 BW/VL/DQ or AVX-NE-CONVERT (not on AVX2-only ones)
needs_bf16_matmul = pytest.mark.skipif(not bf16_matmul_supported(), reason="this CPU has no oneDNN bf16 matmul")


def make_hf(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> Qwen2ForCausalLM:
    """test_builtin_rollout's tiny Qwen2 at hidden 128 (head_dim 32, which the kernels need)."""
    return make_builtin_hf("qwen2", seed=seed, **{"hidden_size": 128, **overrides}).to(dtype)


def engine(hf, kernels: str, dtype: str = "float32") -> BuiltinRolloutEngine:
    e = BuiltinRolloutEngine(hf.config, dtype=dtype, device="cpu", max_batch_size=32, max_seq_len=40,
                             pad_token_id=PAD, kernels=kernels)
    e.load_weights(hf.state_dict().items())
    return e


def prompts(batch: int = 6, width: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    return builtin_prompts(batch, width)


def params(**kw) -> SamplingParams:
    return builtin_params(**{"max_new_tokens": 20, **kw})


@pytest.mark.parametrize("sampling", [dict(), dict(n=4, temperature=1.0), dict(n=3, temperature=0.8, top_k=10, top_p=0.9)])
def test_cpp_matches_torch_fp32(sampling):
    """Same tokens and log-probs (1e-4) as the torch path, with padding, n-sample fan-out, stops and compaction."""
    hf = make_hf()
    ids, mask = prompts()
    ref, _ = engine(hf, "torch").generate_tensors(ids, mask, params(**sampling))
    cpp = engine(hf, "cpp")
    assert cpp.forward_path == "cpp"  # fp32: the portable attention, never the bf16 pairs
    out, stats = cpp.generate_tensors(ids, mask, params(**sampling))
    assert torch.equal(out["responses"], ref["responses"])
    assert torch.equal(out["response_mask"], ref["response_mask"])
    assert (out["rollout_log_probs"] - ref["rollout_log_probs"]).abs().max().item() <= 1e-4
    assert stats["tokens_generated"] > 0


def test_cpp_greedy_equals_hf_generate():
    hf = make_hf(seed=3)
    ids, mask = prompts()
    out, _ = engine(hf, "cpp").generate_tensors(ids, mask, params(max_new_tokens=12, stop_token_ids=()))
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                           eos_token_id=None, pad_token_id=PAD)[:, ids.shape[1]:]
    assert torch.equal(out["responses"], want)


def test_cpp_log_probs_equal_training_forward():
    """The reported log-probs are what the (HF) training forward computes for the sampled tokens."""
    hf = make_hf(seed=4)
    ids, mask = prompts()
    out, _ = engine(hf, "cpp").generate_tensors(ids, mask, params(temperature=1.0, n=2, stop_token_ids=()))
    full = torch.cat([ids.repeat_interleave(2, 0), out["responses"]], dim=1)
    attn = torch.cat([mask.repeat_interleave(2, 0), torch.ones_like(out["responses"])], dim=1)
    with torch.no_grad():
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = hf(full, attention_mask=attn, position_ids=pos).logits[:, ids.shape[1] - 1: -1].float()
    want = torch.log_softmax(logits, -1).gather(-1, out["responses"][..., None]).squeeze(-1)
    assert (out["rollout_log_probs"] - want).abs().max().item() <= 1e-4


@needs_bf16_matmul
def test_cpp_bf16_close_to_torch_bf16():
    """bf16 rounds at the same points as the torch path: the first greedy token of every row agrees and its
    log-prob is within bf16 noise (later tokens may part ways at a near-tie, then differ for good)."""
    hf = make_hf(dtype=torch.bfloat16)
    ids, mask = prompts()
    torch_engine, cpp_engine = engine(hf, "torch", "bfloat16"), engine(hf, "cpp", "bfloat16")
    paired = load_extension().has_paired_bf16()
    assert (torch_engine.forward_path, cpp_engine.forward_path) == ("torch", "cpp, AVX512-BF16 attention" if paired else "cpp")
    ref, _ = torch_engine.generate_tensors(ids, mask, params(max_new_tokens=8, stop_token_ids=()))
    out, _ = cpp_engine.generate_tensors(ids, mask, params(max_new_tokens=8, stop_token_ids=()))
    assert torch.equal(out["responses"][:, 0], ref["responses"][:, 0])
    assert (out["responses"] == ref["responses"]).float().mean().item() >= 0.75
    first = (out["rollout_log_probs"][:, 0] - ref["rollout_log_probs"][:, 0]).abs().max().item()
    assert first <= 0.05


def _logits_per_step(step, model, ids, valid, feed, kernel_layout: bool) -> torch.Tensor:
    """Prefill left-padded prompts, fan every row out to 2 (as n=2 does), then decode `feed`'s columns;
    each step's fp32 logits [steps, 2b, V]. Odd and even cache lengths, padding and a row gather all occur;
    unwritten cache slots hold NaN, so any read of one that is not masked out shows."""
    s, b = model.spec, ids.shape[0]
    cache = KVCache(num_layers=s.num_layers, max_batch=2 * b, kv_heads=s.num_kv_heads, max_len=32,
                    head_dim=s.head_dim, dtype=model.embed.dtype, device="cpu", kernel_layout=kernel_layout)
    cache.allocate()
    for t in cache.keys + cache.values:
        t.fill_(float("nan"))
    fan_out = torch.arange(b).repeat_interleave(2)
    logits = step.prefill(ids, (valid.cumsum(-1) - 1).clamp(min=0), valid, cache).float()
    cache.gather_rows(fan_out, ids.shape[1])
    cache.reset_key_valid(valid[fan_out])
    out, pos = [logits[fan_out]], valid.sum(-1)[fan_out]
    for i in range(feed.shape[1]):
        out.append(step.decode(feed[:, i], pos + i, ids.shape[1] + i, cache, use_mask=True).float())
    return torch.stack(out)


@needs_bf16_matmul
@pytest.mark.parametrize("paired", [True, False], ids=["avx512-bf16-pairs", "portable-vectors"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cpp_bf16_as_accurate_as_torch_bf16(paired, seed):
    """Both bf16 attention paths (AVX512-BF16 dot products on a paired cache layout, and the portable
    loops other CPUs run) stay as close to an fp32 forward of the same bf16 weights as the torch bf16
    path does, over a prefill and 12 decode steps. A wrong cache layout or rounding shows as errors of
    the logits' own size (~10), far past these bounds (measured ratios 0.7-1.1)."""
    if paired and not load_extension().has_paired_bf16():
        pytest.skip("this CPU has no AVX512-BF16; the portable path is what runs here")
    ids, mask = prompts()
    valid = mask.bool()
    exact = engine(make_hf(seed=seed, dtype=torch.bfloat16).float(), "torch").model  # fp32 math, bf16 weights
    model = engine(make_hf(seed=seed, dtype=torch.bfloat16), "torch", "bfloat16").model
    feed = torch.randint(4, model.spec.vocab_size, (2 * ids.shape[0], 12), generator=torch.Generator().manual_seed(seed))
    want = _logits_per_step(exact, exact, ids, valid, feed, kernel_layout=False)
    torch_err = (_logits_per_step(model, model, ids, valid, feed, kernel_layout=False) - want).abs()
    fused = FusedCpuDecoder(model, 2 * ids.shape[0], paired_bf16=paired)
    assert fused.paired_bf16 == paired
    cpp_err = (_logits_per_step(fused, model, ids, valid, feed, kernel_layout=True) - want).abs()
    assert cpp_err.mean() <= 1.5 * torch_err.mean(), (cpp_err.mean(), torch_err.mean())
    assert cpp_err.max() <= 1.5 * torch_err.max(), (cpp_err.max(), torch_err.max())


def test_cpp_sees_new_weights_after_load_weights():
    """RL streams new weights every step: the packed copies must be rebuilt, not served stale."""
    old, new = make_hf(seed=0), make_hf(seed=7)
    ids, mask = prompts()
    e = engine(old, "cpp")
    before, _ = e.generate_tensors(ids, mask, params(stop_token_ids=()))
    e.load_weights(new.state_dict().items())
    after, _ = e.generate_tensors(ids, mask, params(stop_token_ids=()))
    want, _ = engine(new, "torch").generate_tensors(ids, mask, params(stop_token_ids=()))
    assert not torch.equal(before["responses"], after["responses"])
    assert torch.equal(after["responses"], want["responses"])
    e.sleep()  # drops the cache and the packed weights; wake-up on the next call rebuilds both
    again, _ = e.generate_tensors(ids, mask, params(stop_token_ids=()))
    assert torch.equal(again["responses"], want["responses"])


def test_cpp_rejects_unsupported_head_dim():
    hf = make_hf(hidden_size=32)  # 4 heads -> head_dim 8: below one vector pair on AVX2 (16) and AVX-512 (32)
    ids, mask = prompts()
    with pytest.raises(RuntimeError, match="head_dim 8 must be a multiple of"):
        engine(hf, "cpp").generate_tensors(ids, mask, params())


@pytest.mark.skipif(bf16_matmul_supported(), reason="this CPU has oneDNN bf16 matmuls: the bf16 path runs")
def test_cpp_bf16_on_a_cpu_without_bf16_matmuls_says_which_keys_to_change():
    hf = make_hf(dtype=torch.bfloat16)
    model = engine(hf, "torch", "bfloat16").model
    with pytest.raises(CppKernelsUnavailable, match="rollout.dtype=float32, or rollout.kernels=torch"):
        FusedCpuDecoder(model, 8)


@pytest.mark.parametrize("override,match", [
    ("rollout.kernels=cuda", "rollout.kernels"),
    ("cluster.use_gpu=true", "rollout.kernels"),
])
def test_config_rejects_bad_kernels(tmp_path, override, match):
    model = tiny_model(tmp_path / "model")
    cfg = compose_config([*fast_overrides(model, tmp_path, steps=1), "rollout.kernels=cpp", override])
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg, check_files=False)


@pytest.mark.slow
def test_grpo_trains_with_cpp_kernels(ray_cluster, tmp_path):
    """2 GRPO steps on Ray with 2 FSDP2 ranks, rollout.kernels=cpp: after each weight sync the rollout's
    log-probs equal the trainer's (the sync check), so the packed weights follow the updates."""
    model = tiny_model(tmp_path / "model")
    cfg = validate_config(compose_config([*fast_overrides(model, tmp_path, steps=2), "rollout.kernels=cpp"]),
                          check_files=True)
    summary = train(cfg)
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert summary["steps"] == 2 and [r["step"] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r["actor/pg_loss"]) and r["actor/grad_norm"] > 0
        assert r["sync/logprob_max_abs_diff"] < 1e-4
