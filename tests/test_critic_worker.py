"""The PPO critic on 2 real FSDP2 ranks (Ray actors, gloo): it learns, and its checkpoint round-trips."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForTokenClassification

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import compose_config, validate_config
from orchestrator.trainer.loop import mean_metrics
from orchestrator.trainer.sft_data import sft_batch
from orchestrator.tokenizer import load_tokenizer
from workers.runtime import ResourcePool, spawn_colocated

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CRITIC_METRICS = {"critic/vf_loss", "critic/vf_clipfrac", "critic/values_mean", "critic/grad_norm", "critic/lr",
                  "critic/step_skipped", "critic/param_norm"}


def _batch(tok):
    """8 rows (train_batch_size 4 x rollout.n 2) of prompt + answer + EOS, with fixed random returns."""
    rows = [{"prompt": f"{a}+{b}=", "ground_truth": str(a + b), "solution": str(a + b), "row": i}
            for i, (a, b) in enumerate([(1, 2), (13, 4), (7, 70), (9, 9), (21, 3), (5, 55), (8, 1), (40, 2)])]
    batch = sft_batch(rows, "solution", tok)
    batch["returns"] = torch.randn(batch["responses"].shape, generator=torch.Generator().manual_seed(0))
    return batch


def test_value_loss_falls_on_a_fixed_batch_and_checkpoint_round_trips(ray_cluster, tmp_path):
    from workers.roles.critic import CriticWorker

    model = tiny_model(tmp_path / "model")
    overrides = fast_overrides(model, tmp_path, steps=8) + ["actor.shuffle_mini_batches=false"]
    cfg = validate_config(compose_config(["algorithm=ppo", *overrides]), check_files=True)
    tok = load_tokenizer(model)
    pool = ResourcePool(name="critic-test", nnodes=1, devices_per_node=2, use_gpu=False, cpus_per_worker=1,
                        ready_timeout_s=60)
    critic = spawn_colocated(pool, {"critic": (CriticWorker, {"cfg": cfg})}, timeout_s=120,
                             init_timeout_s=60)["critic"]
    batch = _batch(tok)
    try:
        losses = []
        for _ in range(6):  # as the trainer does: fresh values, then one update (2 mini-batches per rank)
            values = critic.compute_values(batch)["values"]
            assert values.shape == batch["responses"].shape and torch.isfinite(values).all()
            per_rank = critic.update_critic(batch.union(_values(values)))
            assert len(per_rank) == 2 and set(per_rank[0]) == CRITIC_METRICS
            assert per_rank[0]["critic/vf_loss"] == per_rank[1]["critic/vf_loss"]  # the global mini-batch loss
            metrics = mean_metrics(per_rank)
            assert all(math.isfinite(v) for v in metrics.values()) and metrics["critic/step_skipped"] == 0.0
            losses.append(metrics["critic/vf_loss"])
        assert losses[-1] < 0.7 * losses[0], losses

        ckpt = tmp_path / "critic-ckpt"
        critic.save_checkpoint(str(ckpt))
        saved = critic.compute_values(batch)["values"]
        after_save = mean_metrics(critic.update_critic(batch.union(_values(saved))))
        assert not torch.equal(critic.compute_values(batch)["values"], saved)  # the update moved the weights
        critic.load_checkpoint(str(ckpt))
        assert torch.equal(critic.compute_values(batch)["values"], saved)
        # optimizer moments and LR schedule came back too: the same update gives the same step
        assert mean_metrics(critic.update_critic(batch.union(_values(saved)))) == after_save
    finally:
        critic.shutdown()
        pool.release()

    hf = AutoModelForTokenClassification.from_pretrained(ckpt, num_labels=1).eval()
    r = batch["responses"].shape[1]
    with torch.no_grad():
        logits = hf(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
    # cells without a response token carry no value (0 with padding removed); compare where a token is
    valid = batch["response_mask"].bool()
    torch.testing.assert_close(logits[:, -r - 1:-1, 0][valid], saved[valid], atol=1e-5, rtol=0)


def _values(values: torch.Tensor):
    from workers.batch import Batch

    return Batch.from_dict({"values": values})
