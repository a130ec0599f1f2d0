"""The TRAIN/ROLLOUT state machine and post-sync verification, with a recording rollout double.

The real rollout engines are tested on their own; here a test double records the calls
the hybrid engine makes (and keeps a plain HF model so log-probs can be compared).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybrid_engine.mode_switch import HybridEngine, Mode
from hybrid_engine.training_state import ModuleState
from hybrid_engine.verify import WeightSyncMismatch, group_param_diffs, verify_sync
from hybrid_engine.weight_stream import WeightStream

CPU = torch.device("cpu")

from fsdp_harness import finish_rank, fsdp2 as _fsdp2, init_gloo as _init, shutdown_gloo, tiny_qwen2 as _tiny_qwen2


# -- test doubles --------------------------------------------------------------------------------


class RecordingRolloutForTest:
    """Records sleep/wake_up/load_weights calls; copies loaded weights into its own plain model."""

    def __init__(self, model: torch.nn.Module | None) -> None:
        self.model = model
        self.calls: list[str] = []
        self.loaded: dict[str, torch.Tensor] = {}

    def sleep(self) -> None:
        self.calls.append("sleep")

    def wake_up(self, tags: Iterable[str] | None = None) -> None:
        self.calls.append("wake_up" if tags is None else "wake_up:" + ",".join(tags))

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.calls.append("load_weights")
        params = dict(self.model.named_parameters()) if self.model is not None else {}
        for name, tensor in weights:
            self.loaded[name] = tensor.clone()
            if name in params:
                params[name].copy_(tensor)

    def weight(self, name: str) -> torch.Tensor:
        return dict(self.model.named_parameters())[name]


class UntaggedRecordingRolloutForTest(RecordingRolloutForTest):
    """An engine whose wake_up restores everything at once (no tags)."""

    def wake_up(self) -> None:  # type: ignore[override]
        self.calls.append("wake_up")


def _log_probs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


# -- the distributed check ---------------------------------------------------------------------


def _switch_worker(rank: int, world: int, init_file: str) -> None:
    _init(rank, world, init_file)
    try:
        model = _fsdp2(_tiny_qwen2(tie=False, seed=0))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(rank))
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

        consumer = rank == 0  # rank 0 hosts the engine; rank 1 has an untagged one that takes no weights
        rollout = RecordingRolloutForTest(_tiny_qwen2(tie=False, seed=1)) if consumer else UntaggedRecordingRolloutForTest(None)
        engine = HybridEngine(
            ModuleState(model, opt, CPU), rollout, device=CPU, bucket_bytes=8192, weight_dtype=torch.float32,
            offload_params=True, offload_optimizer=True, is_rollout_consumer=consumer,
        )
        probe = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(7))
        train_lp = _log_probs(model, probe)  # in TRAIN mode: the trainer's params are offloaded later
        reference = dict(p for b in WeightStream(model, bucket_bytes=8192, dtype=torch.float32, consumer=True) for p in b)

        report = engine.rollout_mode()
        assert engine.mode is Mode.ROLLOUT and not report.noop
        steps = ["offload_optimizer", "wake_weights", "stream_weights", "offload_params"]
        assert list(report.phases) == (steps + ["wake_kv_cache"] if consumer else steps)
        assert report.offload_bytes == 0 and any("CPU" in n for n in report.notes)  # CPU: nothing to move
        assert report.stream_bytes == sum(t.numel() * 4 for t in reference.values()) == report.bytes_moved
        assert report.memory_before.source == "process_rss" and report.memory_after.allocated_bytes > 0
        metrics = report.to_metrics("hybrid/rollout_mode")
        assert metrics["hybrid/rollout_mode/stream_bytes"] == float(report.stream_bytes)
        assert all(isinstance(v, float) for v in metrics.values())
        if consumer:
            loads = rollout.calls.count("load_weights")
            assert loads > 1 and rollout.calls == ["wake_up:weights"] + ["load_weights"] * loads + ["wake_up:kv_cache"]
            assert set(rollout.loaded) == set(reference)
            assert all(torch.equal(rollout.loaded[n], reference[n]) for n in reference)
        else:
            assert rollout.calls == ["wake_up"] and rollout.loaded == {}

        calls = list(rollout.calls)
        again = engine.rollout_mode()
        assert again.noop and again.bytes_moved == 0 and rollout.calls == calls and "already" in again.notes[0]

        if consumer:  # verification needs no collectives: the trainer's side was computed above
            ok = verify_sync(lambda p: train_lp, lambda p: _log_probs(rollout.model, p), atol=1e-5, probe=probe)
            assert ok.max_abs_diff <= 1e-5 and ok.numel == 3 * 8
            with torch.no_grad():
                rollout.weight("model.layers.1.mlp.down_proj.weight")[0, 0] += 1.0
            with pytest.raises(WeightSyncMismatch, match=r"model\.layers\.1") as err:
                verify_sync(
                    lambda p: train_lp, lambda p: _log_probs(rollout.model, p), atol=1e-5, probe=probe,
                    param_diff_fn=lambda: group_param_diffs(reference.items(), rollout.weight),
                )
            assert err.value.worst_group == "model.layers.1" and err.value.group_diffs["model.layers.0"] == 0.0

        back = engine.train_mode()
        assert engine.mode is Mode.TRAIN and rollout.calls == calls + ["sleep"]
        assert list(back.phases) == ["sleep_rollout", "reload_params", "reload_optimizer"]
        assert engine.train_mode().noop and rollout.calls == calls + ["sleep"]
        opt.zero_grad()  # and training goes on
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    finally:
        shutdown_gloo()
    finish_rank()  # only reached when every check passed


@pytest.mark.timeout(180)
def test_mode_switch_two_ranks_fsdp2(tmp_path) -> None:
    mp.spawn(_switch_worker, args=(2, str(tmp_path / "pg_init")), nprocs=2, join=True)


# -- single-process checks -----------------------------------------------------------------------


def _plain_engine(rollout: RecordingRolloutForTest | None, consumer: bool) -> HybridEngine:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return HybridEngine(
        ModuleState(model, opt, CPU), rollout, device=CPU, bucket_bytes=64, weight_dtype=torch.bfloat16,
        offload_params=False, offload_optimizer=False, is_rollout_consumer=consumer,
    )


def test_consumer_needs_a_rollout_and_non_consumer_may_have_none() -> None:
    with pytest.raises(ValueError, match="needs a rollout"):
        _plain_engine(None, consumer=True)
    engine = _plain_engine(None, consumer=False)
    report = engine.rollout_mode()
    assert list(report.phases) == ["stream_weights"] and report.stream_bytes == (16 + 4 + 8 + 2) * 2
    assert engine.train_mode().phases == {}


def test_colocated_engines_are_offloaded_with_the_policy_and_reloaded_bit_exact() -> None:
    """A reference/critic in the same process holds nothing on the device while the rollout engine is awake."""
    from hybrid_engine.offload import TrainingStateOffloader
    from hybrid_engine.training_state import OffloadsWithOffloader

    class Releasing(OffloadsWithOffloader):  # the storage-freeing offload the engines use on an accelerator
        def __init__(self, module: torch.nn.Module, opt: torch.optim.Optimizer | None) -> None:
            self.offloader = TrainingStateOffloader(module, opt, device=CPU, release_storage=True, pin_memory=False)

    ref, critic = torch.nn.Linear(4, 3), torch.nn.Linear(4, 1)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=0.1)
    critic(torch.ones(2, 4)).sum().backward()
    critic_opt.step()
    before = [t.detach().clone() for t in [*ref.parameters(), *critic.parameters()]]
    colocated = [("ref", Releasing(ref, None)), ("critic", Releasing(critic, critic_opt))]
    engine = HybridEngine(
        ModuleState(torch.nn.Linear(4, 2), None, CPU), RecordingRolloutForTest(None), device=CPU, bucket_bytes=64,
        weight_dtype=torch.float32, offload_params=True, offload_optimizer=True, is_rollout_consumer=True,
        colocated=lambda: colocated)
    report = engine.rollout_mode()
    assert {"ref_offload_params", "critic_offload_params", "critic_offload_optimizer"} <= set(report.phases)
    assert all(p.untyped_storage().nbytes() == 0 for p in [*ref.parameters(), *critic.parameters()])
    assert report.offload_bytes > 0
    back = engine.train_mode()
    assert {"ref_reload_params", "critic_reload_optimizer"} <= set(back.phases)
    assert all(torch.equal(a, b) for a, b in zip(before, [t.detach() for t in [*ref.parameters(), *critic.parameters()]]))


def test_failed_switch_leaves_mode_unknown_and_train_mode_recovers() -> None:
    class Failing(UntaggedRecordingRolloutForTest):
        def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
            raise RuntimeError("engine refused weights")

    rollout = Failing(None)
    engine = _plain_engine(rollout, consumer=True)
    with pytest.raises(RuntimeError, match="refused"):
        engine.rollout_mode()
    assert engine.mode is None
    assert not engine.train_mode().noop and engine.mode is Mode.TRAIN and rollout.calls == ["wake_up", "sleep"]


def test_verify_sync_edges() -> None:
    a = torch.tensor([[-1.0, -2.0, -math.inf]])
    assert verify_sync(lambda p: a, lambda p: a.clone(), atol=0.0, probe=None).max_abs_diff == 0.0  # -inf == -inf
    nan = a.clone()
    nan[0, 0] = math.nan
    with pytest.raises(WeightSyncMismatch) as err:
        verify_sync(lambda p: a, lambda p: nan, atol=1.0, probe=None)
    assert err.value.report.max_abs_diff == math.inf and err.value.worst_group is None
    with pytest.raises(ValueError, match="shapes differ"):
        verify_sync(lambda p: a, lambda p: a[:, :2], atol=1.0, probe=None)


def test_group_param_diffs_groups_and_flags_missing() -> None:
    ref = {
        "model.embed_tokens.weight": torch.zeros(3),
        "model.layers.0.mlp.w": torch.zeros(2),
        "model.layers.0.mlp.b": torch.zeros(2),
        "model.layers.1.mlp.w": torch.zeros(2),
        "lm_head.weight": torch.zeros(3),
    }
    got = {k: v.clone() for k, v in ref.items() if k != "lm_head.weight"}
    got["model.layers.0.mlp.b"] += torch.tensor([0.0, 0.25])
    diffs = group_param_diffs(ref.items(), got.__getitem__)
    assert diffs == {"embeddings": 0.0, "model.layers.0": 0.25, "model.layers.1": 0.0, "head": math.inf}
