"""Create exactly the worker groups the configured algorithm needs, on one pool or two.

What is needed comes from registry flags and config switches (KL to a reference, a critic or a teacher
for estimators that declare one, a reward model when enabled), never from the algorithm's name.
Where rollout runs comes from `cluster.placement`: `colocated` puts the rollout engine in the
actor's process (hybrid engine, one pool); `split` gives it a pool of its own and syncs weights
by broadcast. The loop sees the same `Roles` either way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from omegaconf import DictConfig

from orchestrator.advantages.registry import get_advantage_estimator
from orchestrator.trainer.weight_sync import BroadcastSync, InProcessSync, WeightSync
from workers.runtime import ResourcePool, WorkerGroup, spawn_colocated

log = logging.getLogger("baton.roles")


@dataclass
class Roles:
    actor: WorkerGroup
    rollout: WorkerGroup  # generates; the actor group itself when colocated
    weights: WeightSync  # carries the actor's weights to `rollout`
    ref: WorkerGroup | None
    critic: WorkerGroup | None
    reward_model: WorkerGroup | None
    teacher: WorkerGroup | None = None
    pools: list[ResourcePool] = field(default_factory=list)

    def sync_weights(self, version: int | None = None) -> dict[str, float]:
        """After an actor update: the rollout group generates with the new weights (policy `version`) from here
        on; in async mode from its next decode step, even inside a running generate call."""
        return self.weights.sync(version)

    def weight_group_diffs(self) -> list[dict[str, float]]:
        """Largest |trainer - rollout| per parameter group (one merged dict; a list, as a group call returns)."""
        return [self.weights.group_diffs()]

    def groups(self) -> list[WorkerGroup]:
        found = [self.actor, self.rollout, self.ref, self.teacher, self.critic, self.reward_model]
        return [g for i, g in enumerate(found) if g is not None and all(g is not h for h in found[:i])]

    def names(self) -> list[str]:
        return [g.role for g in self.groups()]

    def placement(self) -> dict[str, list[dict]]:
        """Role -> per rank {node_id, ip, pid}: which machine each rank ran on (the run's placement.json)."""
        return {g.role: list(g.nodes or []) for g in self.groups()}

    def shutdown(self) -> None:
        for group in self.groups():
            group.shutdown()
        for pool in self.pools:
            pool.release()


def needs_ref(cfg: DictConfig) -> bool:
    return bool(cfg.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward)


def needs_teacher(cfg: DictConfig) -> bool:
    return get_advantage_estimator(cfg.algorithm.adv_estimator).needs_teacher


def needs_critic(cfg: DictConfig) -> bool:
    return get_advantage_estimator(cfg.algorithm.adv_estimator).needs_critic


def role_specs(cfg: DictConfig, pad_token_id: int) -> dict[str, tuple[type, dict]]:
    """Role name -> (worker class, constructor kwargs) of the training pool, in construction order."""
    from workers.roles.actor_rollout import ActorRolloutWorker
    from workers.roles.ref import RefWorker

    colocated = cfg.cluster.placement != "split"  # split: the rollout engines get a pool of their own
    specs: dict[str, tuple[type, dict]] = {
        "actor": (ActorRolloutWorker, {"cfg": cfg, "pad_token_id": pad_token_id, "colocated": colocated})}
    if needs_ref(cfg):
        specs["ref"] = (RefWorker, {"cfg": cfg})
    if needs_teacher(cfg):
        from workers.roles.teacher import TeacherWorker

        specs["teacher"] = (TeacherWorker, {"cfg": cfg})
    if needs_critic(cfg):
        from workers.roles.critic import CriticWorker

        specs["critic"] = (CriticWorker, {"cfg": cfg})
    if cfg.reward.reward_model.enable:
        from workers.roles.reward_model import RewardModelWorker

        specs["reward_model"] = (RewardModelWorker, {"cfg": cfg})
    return specs


def rollout_spec(cfg: DictConfig, pad_token_id: int) -> dict[str, tuple[type, dict]]:
    """The rollout pool's only role (split placement)."""
    from workers.roles.rollout_worker import RolloutWorker

    return {"rollout": (RolloutWorker, {"cfg": cfg, "pad_token_id": pad_token_id})}


def _pool(cfg: DictConfig, name: str, devices_per_node: int) -> ResourcePool:
    c = cfg.cluster
    return ResourcePool(name=name, nnodes=c.nnodes, devices_per_node=devices_per_node, use_gpu=c.use_gpu,
                        cpus_per_worker=c.cpus_per_worker, ready_timeout_s=c.init_timeout_s)


def _spawn(cfg: DictConfig, pool: ResourcePool, specs: dict[str, tuple[type, dict]],
           classes: dict[str, type], concurrency_groups: tuple[str, ...] = ()) -> dict[str, WorkerGroup]:
    specs = {role: (classes.get(role, cls), kwargs) for role, (cls, kwargs) in specs.items()}
    return spawn_colocated(pool, specs, timeout_s=cfg.cluster.rpc_timeout_s, init_timeout_s=cfg.cluster.init_timeout_s,
                           concurrency_groups=concurrency_groups)


def build_roles(cfg: DictConfig, pad_token_id: int, *, classes: dict[str, type] | None = None) -> Roles:
    """Spawn the pools and groups. `classes` swaps a role's worker class (tests inject faults with subclasses)."""
    classes = classes or {}
    c = cfg.cluster
    split = c.placement == "split"
    if split and (cfg.hybrid.offload_params or cfg.hybrid.offload_optimizer):
        log.info("hybrid.offload_params / hybrid.offload_optimizer have no effect with cluster.placement=split: "
                 "the trainer keeps its devices and never switches to rollout mode")
    train_pool = _pool(cfg, "train" if split else "hybrid", c.devices_per_node)
    pools: list[ResourcePool] = [train_pool]
    groups: dict[str, WorkerGroup] = {}
    try:
        groups.update(_spawn(cfg, train_pool, role_specs(cfg, pad_token_id), classes))
        if split:
            pools.append(_pool(cfg, "rollout", c.rollout_devices_per_node))
            # async: weights are received in a thread of their own while a generate call runs
            weights_thread = ("weights",) if cfg.trainer.mode == "async" else ()
            groups.update(_spawn(cfg, pools[-1], rollout_spec(cfg, pad_token_id), classes, weights_thread))
            weights: WeightSync = BroadcastSync.connect(groups["actor"], groups["rollout"],
                                                        init_timeout_s=c.init_timeout_s, timeout_s=c.rpc_timeout_s)
        else:
            groups["rollout"] = groups["actor"]
            weights = InProcessSync(groups["actor"])
    except Exception:  # nothing started may outlive a failed start-up
        for group in groups.values():
            group.shutdown()
        for pool in pools:
            pool.release()
        raise
    return Roles(actor=groups["actor"], rollout=groups["rollout"], weights=weights, ref=groups.get("ref"),
                 critic=groups.get("critic"), reward_model=groups.get("reward_model"), teacher=groups.get("teacher"),
                 pools=pools)
