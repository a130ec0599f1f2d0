"""The worker-group runtime on real Ray actors with torch.distributed over gloo."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch

from ray_roles import EchoRole, MeshRole
from workers.batch import Batch
from workers.runtime import PendingCall, ResourcePool, WorkerError, WorkerTimeout, spawn_colocated

pytestmark = pytest.mark.timeout(120)


def _pool(name: str, n: int) -> ResourcePool:
    return ResourcePool(name=name, nnodes=1, devices_per_node=n, use_gpu=False, cpus_per_worker=1,
                        ready_timeout_s=30)


@pytest.fixture(scope="module")
def colocated(ray_cluster):
    """One pool of 2 ranks hosting two roles in the same processes."""
    pool = _pool("colocated-test", 2)
    groups = spawn_colocated(pool, {"actor": (EchoRole, {"tag": "a"}), "ref": (EchoRole, {"tag": "r"})},
                             timeout_s=60, init_timeout_s=60)
    yield groups
    groups["actor"].shutdown()
    pool.release()


def test_all_reduce_across_two_actors_over_gloo(colocated):
    assert colocated["actor"].all_reduce_rank() == [3.0, 3.0]


def test_ranks_and_env_are_handed_to_each_actor(colocated):
    info = colocated["actor"].whoami()
    assert [i["rank"] for i in info] == [0, 1]
    assert [i["env_rank"] for i in info] == [0, 1]
    assert {i["world"] for i in info} == {2}
    assert info[0]["pid"] != info[1]["pid"]


def test_colocated_roles_share_processes_but_are_separate_groups(colocated):
    actor, ref = colocated["actor"].whoami(), colocated["ref"].whoami()
    assert [i["pid"] for i in actor] == [i["pid"] for i in ref]
    assert {i["tag"] for i in actor} == {"a"} and {i["tag"] for i in ref} == {"r"}
    assert {i["role"] for i in ref} == {"ref"}


def test_data_parallel_call_pads_and_returns_rows_in_order(colocated):
    x = torch.arange(5, dtype=torch.float32) * 10
    batch = Batch.from_dict({"x": x}, non_tensors={"uid": [f"u{i}" for i in range(5)]})
    out = colocated["actor"].double(batch)
    assert len(out) == 5
    torch.testing.assert_close(out["y"], x * 2)
    assert list(out.non_tensors["uid"]) == [f"u{i}" for i in range(5)]
    # 5 rows padded to 6: rank 0 gets rows 0-2, rank 1 gets rows 3-4 plus one pad row
    assert out["rank"].tolist() == [0, 0, 0, 1, 1]
    assert colocated["actor"].chunk_len(batch) == [3, 3]


def test_rows_with_attention_mask_are_split_by_tokens_and_come_back_in_order(colocated):
    lengths = [16, 15, 14, 13, 2, 1, 1, 1]  # rows in order would give rank 0 58 tokens, rank 1 5
    mask = (torch.arange(16)[None, :] < torch.tensor(lengths)[:, None]).long()
    x = torch.arange(8, dtype=torch.float32)
    batch = Batch.from_dict({"x": x, "attention_mask": mask}, non_tensors={"uid": [f"u{i}" for i in range(8)]})
    assert colocated["actor"].chunk_tokens(batch) == [32, 31]
    assert colocated["actor"].chunk_len(batch) == [4, 4]
    out = colocated["actor"].double(batch)
    torch.testing.assert_close(out["y"], x * 2)
    assert list(out.non_tensors["uid"]) == [f"u{i}" for i in range(8)]
    assert sorted(out["rank"].tolist()) == [0, 0, 0, 0, 1, 1, 1, 1] and out["rank"].tolist() != sorted(out["rank"].tolist())


def test_one_to_all_and_rank_zero(colocated):
    assert colocated["actor"].fail_on(rank=7) == [0, 1]
    assert colocated["actor"].only_rank_zero() == 0


def test_non_blocking_call_returns_future_that_chains(colocated):
    batch = Batch.from_dict({"x": torch.arange(4, dtype=torch.float32)}, non_tensors={"uid": list("abcd")})
    pending = colocated["actor"].double_async(batch)
    assert isinstance(pending, PendingCall)
    # chaining: the future itself is the argument of the next group's data-parallel call
    assert colocated["ref"].chunk_len(pending) == [2, 2]
    torch.testing.assert_close(pending.result()["y"], torch.arange(4, dtype=torch.float32) * 2)


def test_method_that_raises_reports_text_and_rank(colocated):
    with pytest.raises(WorkerError) as err:
        colocated["actor"].fail_on(rank=1)
    assert err.value.rank == 1 and err.value.role == "actor"
    assert "bad input seen on rank 1" in str(err.value) and "actor rank 1" in str(err.value)


def test_call_past_its_deadline_names_the_pending_ranks(ray_cluster):
    pool = _pool("timeout-test", 2)
    groups = spawn_colocated(pool, {"slow": (EchoRole, {"tag": "s"})}, timeout_s=2, init_timeout_s=60)
    try:
        with pytest.raises(WorkerTimeout, match=r"slow.sleep_then_reduce\(\) did not finish within 2s"):
            groups["slow"].sleep_then_reduce(30.0)
    finally:
        groups["slow"].shutdown()
        pool.release()


def test_sigkilled_actor_fails_the_call_naming_role_and_rank(ray_cluster):
    pool = _pool("kill-test", 2)
    groups = spawn_colocated(pool, {"critic": (EchoRole, {"tag": "c"})}, timeout_s=120, init_timeout_s=60)
    group = groups["critic"]
    try:
        victim_pid = group.pid()[1]
        pending = group.call_async("sleep_then_reduce", 3.0)  # rank 0 will wait in all_reduce for rank 1
        time.sleep(1.0)
        os.kill(victim_pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerError) as err:
            pending.result()
        assert time.monotonic() - start < 30
        assert err.value.role == "critic" and err.value.rank == 1
        assert "died" in str(err.value)
    finally:
        group.shutdown()
        pool.release()


def test_mesh_dispatch_sends_one_chunk_per_dp_group_and_collects_one_rank_each(ray_cluster):
    pool = _pool("mesh-test", 4)
    groups = spawn_colocated(pool, {"tp": (MeshRole, {})}, timeout_s=60, init_timeout_s=60)
    try:
        batch = Batch.from_dict({"x": torch.arange(3)})
        out = groups["tp"].tag_rows(batch)
        assert out["x"].tolist() == [0, 1, 2]
        # DP group 0 = ranks (0,1) collected from rank 0; DP group 1 = ranks (2,3) from rank 2
        assert out["rank"].tolist() == [0, 0, 2]
    finally:
        groups["tp"].shutdown()
        pool.release()


def test_pool_that_cannot_fit_fails_with_its_name(ray_cluster):
    pool = ResourcePool(name="too-big", nnodes=1, devices_per_node=64, use_gpu=False, cpus_per_worker=1,
                        ready_timeout_s=2)
    with pytest.raises(RuntimeError, match="resource pool 'too-big'"):
        pool.create()
