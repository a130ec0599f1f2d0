"""Create exactly the worker groups the configured algorithm needs, colocated on one pool.

What is needed comes from registry flags and config switches (KL to a reference, a critic for
estimators that declare one, a reward model when enabled), never from the algorithm's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from orchestrator.advantages.registry import get_advantage_estimator
from workers.runtime import ResourcePool, WorkerGroup, spawn_colocated


@dataclass
class Roles:
    actor: WorkerGroup
    ref: WorkerGroup | None
    critic: WorkerGroup | None
    reward_model: WorkerGroup | None
    pools: list[ResourcePool] = field(default_factory=list)

    def names(self) -> list[str]:
        return [n for n in ("actor", "ref", "critic", "reward_model") if getattr(self, n) is not None]

    def shutdown(self) -> None:
        for name in self.names():
            getattr(self, name).shutdown()
        for pool in self.pools:
            pool.release()


def needs_ref(cfg: DictConfig) -> bool:
    return bool(cfg.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward)


def needs_critic(cfg: DictConfig) -> bool:
    return get_advantage_estimator(cfg.algorithm.adv_estimator).needs_critic


def role_specs(cfg: DictConfig, pad_token_id: int) -> dict[str, tuple[type, dict]]:
    """Role name -> (worker class, constructor kwargs), in construction order."""
    from workers.roles.actor_rollout import ActorRolloutWorker
    from workers.roles.ref import RefWorker

    specs: dict[str, tuple[type, dict]] = {"actor": (ActorRolloutWorker, {"cfg": cfg, "pad_token_id": pad_token_id})}
    if needs_ref(cfg):
        specs["ref"] = (RefWorker, {"cfg": cfg})
    if needs_critic(cfg):
        from workers.roles.critic import CriticWorker

        specs["critic"] = (CriticWorker, {"cfg": cfg})
    if cfg.reward.reward_model.enable:
        from workers.roles.reward_model import RewardModelWorker

        specs["reward_model"] = (RewardModelWorker, {"cfg": cfg})
    return specs


def build_roles(cfg: DictConfig, pad_token_id: int) -> Roles:
    c = cfg.cluster
    pool = ResourcePool(name="hybrid", nnodes=c.nnodes, devices_per_node=c.devices_per_node, use_gpu=c.use_gpu,
                        cpus_per_worker=c.cpus_per_worker, ready_timeout_s=c.init_timeout_s)
    groups = spawn_colocated(pool, role_specs(cfg, pad_token_id), timeout_s=c.rpc_timeout_s,
                             init_timeout_s=c.init_timeout_s)
    return Roles(actor=groups["actor"], ref=groups.get("ref"), critic=groups.get("critic"),
                 reward_model=groups.get("reward_model"), pools=[pool])
