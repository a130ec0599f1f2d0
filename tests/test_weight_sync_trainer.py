"""Weight sync at the trainer level, both placements, real Ray actors and 2 FSDP2 ranks over gloo.

After an actor update and a sync, the rollout engines hold exactly the trainer's weights (the
same tensors a checkpoint of the actor holds, which differ from the starting model), and
generate greedily exactly what a fresh engine loaded from that checkpoint generates. A weight
corrupted after the sync stops the next step with WeightSyncMismatch naming its layer.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e2e_helpers import fast_overrides, tiny_model
from fault_roles import InspectableActorRolloutWorker, InspectableRolloutWorker
from orchestrator.config import compose_config, validate_config
from orchestrator.tracking import Tracker
from orchestrator.trainer.data import load_rows, prompts_to_batch, task_files
from orchestrator.trainer.loop import RLTrainer
from orchestrator.trainer.roles import build_roles
from orchestrator.trainer.sync_check import WeightSyncMismatch
from orchestrator.tokenizer import load_tokenizer
from workers.roles.rollout_worker import max_seq_len
from workers.rollout.builtin.engine import BuiltinRolloutEngine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CORRUPTED = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module", params=["colocated", "split"])
def trainer(request, ray_cluster, tmp_path_factory):
    placement = request.param
    root = tmp_path_factory.mktemp(placement)
    model = tiny_model(root / "model")
    cfg = validate_config(compose_config(
        ["algorithm=grpo", f"cluster.placement={placement}", "actor.optim.lr=1e-2",
         *fast_overrides(model, root, steps=3)]), check_files=True)
    tok = load_tokenizer(model)
    train_files, val_files = task_files(cfg)
    classes = {"actor": InspectableActorRolloutWorker} if placement == "colocated" else \
        {"rollout": InspectableRolloutWorker}
    roles = build_roles(cfg, tok.pad_token_id, classes=classes)
    tracker = Tracker(root / "run", [], "sync")
    try:
        yield RLTrainer(cfg, tok, roles, load_rows(train_files, cfg, tok), load_rows(val_files, cfg, tok), tracker)
    finally:
        tracker.close()
        roles.shutdown()


def test_after_an_update_rollout_holds_exactly_the_trainer_weights(trainer, tmp_path):
    roles = trainer.roles
    roles.sync_weights()  # as fit() does before the first step
    trainer.step = 1
    metrics = trainer.train_step()  # generate, check, update, sync
    assert metrics["sync/logprob_max_abs_diff"] < 1e-4 and metrics["sync/bytes_moved"] > 0
    ckpt = tmp_path / "actor"
    roles.actor.save_checkpoint(str(ckpt))

    saved = {k: v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(f).items()}
    initial = {k: v for f in sorted(Path(trainer.cfg.model.path).glob("*.safetensors"))
               for k, v in load_file(f).items()}
    assert any(not torch.equal(saved[n], initial[n]) for n in initial), "the update must have changed weights"
    per_rank = roles.rollout.rollout_weights(sorted(saved))
    assert len(per_rank) == roles.rollout.world_size
    for held in per_rank:
        for name, value in saved.items():
            assert torch.equal(held[name], value), name

    prompts = prompts_to_batch(trainer.val_rows[:8], trainer.tok, "greedy")
    greedy = trainer.sampling(n=1, temperature=0.0, seed=0)
    got = roles.rollout.generate(prompts, greedy)
    fresh = BuiltinRolloutEngine.from_pretrained(ckpt, dtype="float32", device="cpu", max_batch_size=64,
                                                 max_seq_len=max_seq_len(trainer.cfg),
                                                 pad_token_id=trainer.tok.pad_token_id)
    want = fresh.generate(prompts, greedy)
    assert torch.equal(got["responses"], want["responses"])


def test_corrupted_rollout_weight_stops_the_step_naming_its_layer(trainer):
    roles = trainer.roles
    roles.sync_weights()
    roles.rollout.corrupt_rollout_weight(CORRUPTED, 0.5)
    trainer.step += 1
    with pytest.raises(WeightSyncMismatch, match=r"largest weight difference in 'model\.layers\.1' \(0\.5\)"):
        trainer.train_step()


def test_split_placement_runs_rollout_in_processes_of_its_own(trainer):
    roles = trainer.roles
    if trainer.cfg.cluster.placement != "split":
        assert roles.rollout is roles.actor and [p.name for p in roles.pools] == ["hybrid"]
        return
    actor_pids = {h.pid.remote() for h in roles.actor.hosts}
    rollout_pids = {h.pid.remote() for h in roles.rollout.hosts}
    import ray

    actor_pids, rollout_pids = set(ray.get(list(actor_pids), timeout=30)), set(ray.get(list(rollout_pids), timeout=30))
    assert len(actor_pids) == 2 and len(rollout_pids) == 1 and not actor_pids & rollout_pids
    assert [p.name for p in roles.pools] == ["train", "rollout"]
    assert roles.names() == ["actor", "rollout", "ref"]
