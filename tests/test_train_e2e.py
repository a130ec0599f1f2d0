"""`baton train` end to end on real Ray actors with 2 FSDP2 ranks (gloo), built-in rollout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import compose_config, validate_config
from orchestrator.entry import train
from orchestrator.trainer.data import prompts_to_batch
from orchestrator.tracking import read_metrics_jsonl
from workers.rollout.base import SamplingParams
from workers.rollout.builtin.engine import BuiltinRolloutEngine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def grpo_run(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    model = tiny_model(root / "model")
    cfg = validate_config(compose_config(["algorithm=grpo", *fast_overrides(model, root, steps=3)]), check_files=True)
    summary = train(cfg)
    return root, model, summary


def test_grpo_runs_three_steps_and_writes_what_a_person_reads(grpo_run):
    root, _, summary = grpo_run
    run = root / "run"
    records = [r for r in read_metrics_jsonl(run / "metrics.jsonl") if "timing_s/step" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        # the rollout engine generated with exactly the weights the trainer holds
        assert r["sync/logprob_max_abs_diff"] < 1e-4
        assert r["actor/grad_norm"] >= 0 and r["timing_s/update_actor"] > 0
        # rollout statistics describe the whole batch (4 prompts x 2 samples), not rank 0's half of it
        assert r["rollout/num_sequences"] == 8
        assert r["rollout/tokens_generated"] == pytest.approx(8 * r["response_length/mean"])
        # per-phase throughput: generation counts generated tokens, training-side phases every attended token
        assert r["perf/tokens_per_s/generate"] == pytest.approx(r["rollout/tokens_generated"] / r["timing_s/generate"])
        assert r["perf/tokens_per_s/ref"] > r["rollout/tokens_generated"] / r["timing_s/ref"]  # prompts count too
        for phase in ("generate", "old_log_prob", "ref", "update_actor"):
            assert 0 < r[f"perf/mfu/{phase}"] < 1, phase
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["steps"] == 3 and on_disk["accuracy_key"] == "val/accuracy"
    assert 0 < on_disk["perf_mean"]["mfu/update_actor"] < 1 and on_disk["perf_mean"]["tokens_per_s/ref"] > 0
    assert summary["steps"] == 3
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run / "tensorboard").iterdir())


def test_policy_weights_change_and_checkpoints_are_atomic(grpo_run):
    root, model, _ = grpo_run
    ckpts = root / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_3"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_2", "step_3"]
    assert not list(ckpts.glob("*.tmp"))
    # an HF directory like save_pretrained writes: a tied head stored once, the tokenizer that wrote it beside it
    actor = ckpts / "step_3" / "actor"
    assert "lm_head.weight" not in load_file(actor / "model.safetensors")
    assert (actor / "tokenizer.json").read_text() == (model / "tokenizer.json").read_text()
    before = AutoModelForCausalLM.from_pretrained(model)
    after = AutoModelForCausalLM.from_pretrained(ckpts / "step_3" / "actor")
    diffs = [(a - b).abs().max().item() for a, b in zip(after.state_dict().values(), before.state_dict().values())]
    assert max(diffs) > 0


def test_mid_run_checkpoint_loads_into_rollout_engine_and_hf(grpo_run, tmp_path):
    root, model, _ = grpo_run
    ckpt = root / "run" / "checkpoints" / "step_2" / "actor"
    hf = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    engine = BuiltinRolloutEngine.from_pretrained(ckpt, dtype="float32", device="cpu", max_batch_size=8,
                                                  max_seq_len=32, pad_token_id=0)
    from orchestrator.tokenizer import load_tokenizer

    tok = load_tokenizer(model)
    prompts = prompts_to_batch([{"prompt": "12+7=", "ground_truth": "19", "row": 0},
                                {"prompt": "3-45=", "ground_truth": "-42", "row": 1}], tok, "t")
    out = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=6,
                                                  seed=0))
    with torch.no_grad():
        expect = hf.generate(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"],
                             max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(out["responses"], expect[:, prompts["input_ids"].shape[1]:])


def test_resume_continues_from_latest_checkpoint(grpo_run):
    root, model, _ = grpo_run
    overrides = fast_overrides(model, root, steps=4) + ["trainer.resume=true"]
    train(validate_config(compose_config(["algorithm=grpo", *overrides]), check_files=True))
    steps = [r["step"] for r in read_metrics_jsonl(root / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert steps == [1, 2, 3, 4]  # step 4 only: steps 1-3 came from the checkpoint
    assert (root / "run" / "checkpoints" / "latest").read_text().strip() == "step_4"


def test_auto_correction_recomputes_old_log_probs_only_on_verify_steps_while_engines_agree(ray_cluster, tmp_path):
    """rollout_correction.mode=auto: step 1 and verify steps recompute pi_old; between them the rollout's
    log-probs are used only when the last measured gap was within equal_tolerance."""
    model = tiny_model(tmp_path / "model")
    runs = {}
    for name, tolerance in (("loose", 1e-4), ("strict", 0.0)):
        root = tmp_path / name
        cfg = validate_config(compose_config([
            *fast_overrides(model, root, steps=4), "hybrid.verify_every=2", "trainer.save_every=0",
            "algorithm.rollout_correction.mode=auto", f"algorithm.rollout_correction.equal_tolerance={tolerance}"]),
            check_files=True)
        train(cfg)
        runs[name] = [r for r in read_metrics_jsonl(root / "run" / "metrics.jsonl") if "timing_s/step" in r]
    loose = runs["loose"]
    assert [r["rollout_correction/recomputed"] for r in loose] == [1.0, 1.0, 0.0, 1.0]  # fp32 engines agree
    assert "timing_s/old_log_prob" not in loose[2] and "sync/logprob_mean_abs_diff" not in loose[2]
    assert all(r["sync/logprob_mean_abs_diff"] < 1e-4 for r in (loose[0], loose[1], loose[3]))
    # a tolerance no gap can meet unless the engines agree bit for bit: step 3 recomputes iff step 2's gap was 0
    strict = runs["strict"]
    assert strict[2]["rollout_correction/recomputed"] == float(strict[1]["sync/logprob_mean_abs_diff"] > 0)
