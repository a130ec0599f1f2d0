"""Every socket a Baton worker listens on is bound to the node's Ray address (127.0.0.1 here), never to all
interfaces: the torch.distributed rendezvous store, the gloo pairs, the split-placement weight-sync group.

Read from the real processes with psutil, after the groups have formed and talked.
"""
from __future__ import annotations

import os

import psutil
import pytest
import ray

from e2e_helpers import fast_overrides, tiny_model
from hybrid_engine.sync_group import open_sync_store
from orchestrator.config import compose_config, validate_config
from orchestrator.trainer.roles import build_roles
from ray_roles import EchoRole
from workers.runtime import ResourcePool, spawn_colocated

pytestmark = pytest.mark.timeout(180)

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}


def _listening(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def _assert_on_loopback(pids: list[int]) -> None:
    for pid in pids:
        sockets = _listening(pid)
        assert sockets, f"process {pid} listens on nothing: the check would prove nothing"
        wide = sorted(s for s in sockets if s[0] not in LOOPBACK)
        assert not wide, f"process {pid} listens beyond the node address: {wide}"


def test_the_node_address_is_loopback(ray_cluster):
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_rendezvous_store_binds_only_the_given_address():
    store, port = open_sync_store("127.0.0.1", timeout_s=10)
    assert ("127.0.0.1", port) in _listening(os.getpid())
    assert not any(p == port and ip not in LOOPBACK for ip, p in _listening(os.getpid()))
    store.set("k", "v")


def test_worker_group_listens_on_the_node_address_only(ray_cluster):
    pool = ResourcePool(name="sockets", nnodes=1, devices_per_node=2, use_gpu=False, cpus_per_worker=1,
                        ready_timeout_s=60)
    group = spawn_colocated(pool, {"echo": (EchoRole, {"tag": "s"})}, timeout_s=60, init_timeout_s=60)["echo"]
    try:
        assert group.all_reduce_rank() == [3.0, 3.0]  # the gloo pairs and the store have been used
        _assert_on_loopback(group.pid())
    finally:
        group.shutdown()
        pool.release()


def test_split_placement_weight_sync_listens_on_the_node_address_only(ray_cluster, tmp_path):
    model = tiny_model(tmp_path / "model")
    cfg = validate_config(compose_config(["algorithm=grpo", "cluster.placement=split",
                                          *fast_overrides(model, tmp_path, steps=1)]), check_files=True)
    roles = build_roles(cfg, pad_token_id=0)
    try:
        roles.sync_weights()  # a broadcast over the weight-sync group
        pids = ray.get([h.pid.remote() for h in roles.actor.hosts + roles.rollout.hosts], timeout=60)
        _assert_on_loopback(pids)
    finally:
        roles.shutdown()
