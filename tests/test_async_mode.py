"""`trainer.mode=async`: a producer keeps the rollout pool generating while the trainer trains; weights are
published without waiting and taken mid-generation; no sample beyond rollout.max_staleness is trained on;
a killed run resumes with every prompt of the epoch trained exactly once."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from e2e_helpers import fast_overrides, kill_train_during_step, tiny_model
from orchestrator.config import compose_config, validate_config
from orchestrator.entry import train
from orchestrator.tokenizer import load_tokenizer
from orchestrator.tracking import read_metrics_jsonl
from orchestrator.trainer.data import prompts_to_batch
from orchestrator.trainer.roles import build_roles
from workers.rollout.base import SamplingParams

STEPS, PROMPTS = 4, 16  # 4 prompts per step: exactly one epoch


def _overrides(model: Path, root: Path, *extra: str) -> list[str]:
    return ["algorithm=grpo", "cluster.placement=split", "trainer.mode=async",
            *fast_overrides(model, root, steps=STEPS), f"task.params.n_train={PROMPTS}", "data.shuffle=true",
            "trainer.save_every=2", "rollout.max_new_tokens=8", *extra]


def _steps(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics_jsonl(run / "metrics.jsonl") if "timing_s/step" in r}


def _prompt_counts(run: Path) -> Counter:
    lines = [json.loads(line) for line in (run / "lineage.jsonl").read_text().splitlines()]
    return Counter(key for line in lines for key in line["prompts"])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("async") / "model")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_staleness_bound_is_respected_and_stale_prompts_are_regenerated(ray_cluster, model, tmp_path):
    """Streamed (the default): max_staleness=0 with 3 batches of prompts submitted, so some groups finish after an
    update and the bound bites; they are regenerated, never trained, and every prompt is trained once."""
    train(validate_config(compose_config(_overrides(model, tmp_path, "rollout.max_staleness=0",
                                                    "rollout.async_calls=3")), check_files=True))
    steps = _steps(tmp_path / "run")
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert all(r["async/staleness_max"] == 0 and r["async/streamed"] == 1.0 for r in steps.values())
    assert sum(r["async/stale_groups"] for r in steps.values()) > 0  # ... and it was tested
    counts = _prompt_counts(tmp_path / "run")  # regenerated, not lost: the epoch is trained exactly once
    assert len(counts) == PROMPTS and set(counts.values()) == {1}, counts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drop_discards_stale_samples_and_counts_them(ray_cluster, model, tmp_path):
    """Queued generate calls (rollout.stream=false): the bound holds there too, stale groups are dropped."""
    train(validate_config(compose_config(_overrides(model, tmp_path, "rollout.stream=false",
                                                    "rollout.max_staleness=0", "rollout.async_calls=3",
                                                    "rollout.on_stale=drop",
                                                    "trainer.total_steps=3")), check_files=True))
    steps = _steps(tmp_path / "run")
    assert all(r["async/staleness_max"] == 0 for r in steps.values())
    dropped = sum(r["async/stale_groups"] for r in steps.values())
    assert dropped > 0 and len(_prompt_counts(tmp_path / "run")) == 3 * 4  # trained ones are fresh prompts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_weight_update_lands_inside_a_running_generate_call(ray_cluster, tmp_path):
    """The trainer publishes while the rollout pool is mid-call: the sync returns without waiting for the call,
    and the call's sequences switch version between two decode steps."""
    from orchestrator import warm_start

    cache = tmp_path / "cache"
    assert warm_start.install_shipped(compose_config([f"trainer.cache_dir={cache}"]))  # 3M parameters: slow enough
    model = cache / "warmstart" / "arithmetic-tiny-qwen2"
    cfg = validate_config(compose_config(_overrides(model, tmp_path, "rollout.max_new_tokens=40")), check_files=True)
    tok = load_tokenizer(str(model))
    roles = build_roles(cfg, tok.pad_token_id)
    try:
        roles.sync_weights(0)
        rows = [{"prompt": f"{i}+{i}=", "ground_truth": str(2 * i), "row": i} for i in range(40)]
        prompts = prompts_to_batch(rows, tok, uid_prefix="t")
        params = SamplingParams(n=8, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=40, seed=1)
        call = roles.rollout.call_async("generate", prompts, params)  # 320 rows x 40 tokens, no stop: seconds
        time.sleep(1.0)
        assert not call.done(), "the generate call ended before the update could be sent; make it longer"
        start = time.monotonic()
        sync = roles.sync_weights(1)
        published_s = time.monotonic() - start
        assert sync["async/applied_while_idle"] == 0.0  # it went to the mailbox of a generating engine
        assert not call.done()  # the trainer did not wait for generation
        out = call.result()
    finally:
        roles.shutdown()
    versions, valid = out["token_versions"], out["response_mask"].bool()
    assert set(versions[valid].unique().tolist()) == {0, 1}
    switched = [(v[m][:-1] != v[m][1:]).sum().item() for v, m in zip(versions, valid)]
    assert max(switched) == 1 and sum(s > 0 for s in switched) > 0  # 0...0 1...1 within a sequence
    assert published_s < 30


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_async_run_resumes_training_every_prompt_exactly_once(ray_cluster, model, tmp_path):
    kill_train_during_step(_overrides(model, tmp_path), tmp_path / "run", step=3)
    run = tmp_path / "run"
    saved = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 2 <= saved < STEPS
    buffer = torch.load(run / "checkpoints" / f"step_{saved}" / "async_buffer.pt", weights_only=False)
    assert buffer["groups"] or buffer["redo"]  # samples or prompts were in flight when it was written
    train(validate_config(compose_config(_overrides(model, tmp_path, "trainer.resume=true")), check_files=True))
    assert sorted(_steps(run)) == list(range(1, STEPS + 1))
    counts = _prompt_counts(run)
    assert len(counts) == PROMPTS and set(counts.values()) == {1}, counts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_weight_update_lands_inside_a_running_stream(ray_cluster, tmp_path):
    """The stream thread decodes while the weights thread receives version 1; the stream takes it between two
    steps and its running samples continue under it (0...0 1...1), prompts submitted later start under it."""
    from orchestrator import warm_start

    cache = tmp_path / "cache"
    assert warm_start.install_shipped(compose_config([f"trainer.cache_dir={cache}"]))
    model = cache / "warmstart" / "arithmetic-tiny-qwen2"
    cfg = validate_config(compose_config(_overrides(model, tmp_path, "rollout.max_new_tokens=40",
                                                    "rollout.max_batch_size=32")), check_files=True)
    tok = load_tokenizer(str(model))
    roles = build_roles(cfg, tok.pad_token_id)
    try:
        roles.sync_weights(0)
        rows = [{"prompt": f"{i}+{i}=", "ground_truth": str(2 * i), "row": i} for i in range(PROMPTS * 4)]
        prompts = prompts_to_batch(rows, tok, uid_prefix="t")
        roles.rollout.stream_start(SamplingParams(n=8, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=40,
                                                  seed=1))
        roles.rollout.stream_submit(prompts, 1)  # 512 rows, 32 at a time: later prompts wait for rows
        early = [g for rank in roles.rollout.stream_collect(1, 60.0) for g in rank]  # the first wave is done
        start = time.monotonic()
        sync = roles.sync_weights(1)
        published_s = time.monotonic() - start
        assert sync["async/applied_while_idle"] == 0.0  # it went to the mailbox of a running stream
        groups = list(early)
        deadline = time.monotonic() + 300
        while len(groups) < len(rows) and time.monotonic() < deadline:
            groups += [g for rank in roles.rollout.stream_collect(1, 0.5) for g in rank]
        assert roles.rollout.stream_stop() == [[]]
    finally:
        roles.shutdown()
    assert sorted(g.request_id for g in groups) == sorted(prompts.non_tensors["uid"])
    samples = [v for g in groups for v in g.versions]
    switched = [sum(a != b for a, b in zip(v, v[1:])) for v in samples]
    assert max(switched) == 1 and sum(s > 0 for s in switched) > 0  # mid-sequence, once
    assert any(set(v) == {1} for v in samples)  # prompts that started after the update
    assert published_s < 30
