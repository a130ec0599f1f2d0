"""The actor: the policy's training engine plus where its rollout engine lives (workers/roles/placement.py).

Colocated, the rollout engine is in this process and the hybrid engine time-shares the device:
`generate` runs in ROLLOUT mode, everything that needs gradients or training weights in TRAIN
mode. Split, the rollout pool generates and this role only trains and broadcasts weights.
The training engine is FSDP2 or Megatron (`trainer.backend`); this role sees only the
TrainingEngine interface.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from workers.batch import Batch
from workers.roles.checkpoint_view import checkpoint_view
from workers.roles.actor_loss import actor_norm_constant, make_actor_loss
from workers.roles.engine_specs import actor_optimizer_steps, optim_spec, role_engine
from workers.roles.mini_batches import mean_history, mini_batches
from workers.roles.placement import LocalRollout, RemoteRollout, RolloutPlacement
from workers.roles.rng_state import load_rng_state, save_rng_state
from workers.roles.rollout_worker import max_seq_len, rank_sampling
from workers.rollout.base import SamplingParams, scoring_temperature
from workers.rollout.factory import build_rollout
from workers.runtime import Dispatch, Worker, WorkerContext, register


class ActorRolloutWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig, pad_token_id: int, colocated: bool = True):
        super().__init__(ctx)
        self.cfg = cfg
        torch.manual_seed(cfg.trainer.seed)
        self.engine = role_engine(cfg, ctx.device, cfg.model.path, "causal_lm",
                                  optim_spec(cfg.actor.optim, actor_optimizer_steps(cfg)), megatron=cfg.actor.megatron,
                                  max_tokens=cfg.actor.max_tokens_per_micro_batch)
        if colocated:
            rollout = build_rollout(cfg.rollout, cfg.model.path, device=ctx.device, max_seq_len=max_seq_len(cfg),
                                    pad_token_id=pad_token_id, seed=cfg.trainer.seed + ctx.rank)
            self.placement: RolloutPlacement = LocalRollout(self.engine, rollout, cfg, ctx.device)
        else:
            self.placement = RemoteRollout(self.engine, cfg, ctx.device, ctx.rank)
        self.loss_fn = make_actor_loss(cfg.actor, norm_constant=actor_norm_constant(cfg))
        # one stream per data-parallel group: the TP/PP ranks of a group must cut the same mini-batches
        self.shuffle_gen = torch.Generator().manual_seed(cfg.trainer.seed * 1000 + self.engine.mesh.dp_rank)

    @property
    def rollout(self):
        """This rank's rollout engine (None under split placement)."""
        return self.placement.rollout

    @register(Dispatch.ONE_TO_ALL)
    def mesh_info(self) -> dict:
        return self.engine.mesh.dispatch_info()

    # --- rollout side -----------------------------------------------------------------

    @register(Dispatch.ONE_TO_ALL)
    def sync_weights(self) -> dict[str, float]:
        """Publish the current training weights to the rollout engines (in-process, or by broadcast)."""
        return self.placement.publish()

    @register(Dispatch.DP)
    def generate(self, batch: Batch, params: SamplingParams) -> Batch:
        return self.placement.generate(batch, rank_sampling(params, self.rank))

    @register(Dispatch.RANK_ZERO)
    def open_weight_group(self) -> tuple[str, int]:
        """Split placement: host the weight-sync rendezvous; returns (address, port) for the rollout ranks."""
        return self._remote().open_group()

    @register(Dispatch.RANK_ZERO)
    def join_weight_group(self, world_size: int) -> None:
        """Split placement: collective with every rollout rank; this rank is group rank 0, the sender."""
        self._remote().join_group(world_size)

    def _remote(self) -> RemoteRollout:
        if not isinstance(self.placement, RemoteRollout):
            raise RuntimeError("colocated placement: the actor streams weights in-process, it has no weight-sync group")
        return self.placement

    # --- training side ----------------------------------------------------------------

    @register(Dispatch.ONE_TO_ALL)
    def train_mode(self) -> None:
        self.placement.to_train()

    @register(Dispatch.DP_MESH)
    def compute_log_prob(self, batch: Batch) -> Batch:
        """Old log-probs (and entropy) under the training engine, at the rollout temperature."""
        self.placement.to_train()
        out = self.engine.compute_log_probs(batch, temperature=scoring_temperature(self.cfg.rollout.temperature),
                                            micro_batch_size=self.cfg.actor.log_prob_micro_batch_size,
                                            with_entropy=True)
        return Batch.from_dict({"old_log_probs": out["log_probs"], "entropy": out["entropy"]})

    @register(Dispatch.DP_MESH)
    def update_actor(self, batch: Batch) -> dict[str, float]:
        """PPO epochs over this data-parallel group's rows, one optimizer step per mini-batch."""
        self.placement.to_train()
        history: dict[str, list[float]] = {}
        for mini in mini_batches(batch, num_mini=self.cfg.data.train_batch_size // self.cfg.actor.ppo_mini_batch_size,
                                 epochs=self.cfg.actor.ppo_epochs, shuffle=self.cfg.actor.shuffle_mini_batches,
                                 generator=self.shuffle_gen):
            metrics = self.engine.train_mini_batch(mini, self.loss_fn, micro_batch_size=self.cfg.actor.micro_batch_size,
                                                   temperature=scoring_temperature(self.cfg.rollout.temperature),
                                                   with_entropy=True)
            for k, v in metrics.items():
                history.setdefault(k if "/" in k else f"actor/{k}", []).append(float(v))
        return mean_history(history)

    # --- checkpoints and diagnostics --------------------------------------------------

    @register(Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, directory: str) -> dict[str, int]:
        """Collective; returns this rank's view of what every rank wrote (the driver checks it is shared)."""
        self.placement.to_train()
        self.engine.save_checkpoint(directory)
        save_rng_state(directory, self.rank, {"shuffle": self.shuffle_gen})
        return checkpoint_view(directory)

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, directory: str) -> None:
        self.placement.to_train()
        self.engine.load_checkpoint(directory)
        load_rng_state(directory, self.rank, {"shuffle": self.shuffle_gen})

    @register(Dispatch.ONE_TO_ALL)
    def weight_group_diffs(self) -> dict[str, float]:
        """Largest |trainer - rollout| per parameter group (colocated: compared here; split: sent for the pool)."""
        return self.placement.group_diffs()
