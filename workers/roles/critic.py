"""The critic: an FSDP2 value model (same architecture as the policy, a scalar head per token)
trained by clipped value regression on the returns of the advantage estimator (PPO/GAE)."""
from __future__ import annotations

from typing import Mapping

import torch
from omegaconf import DictConfig
from torch import Tensor

from workers.batch import Batch
from workers.roles.checkpoint_view import checkpoint_view
from workers.roles.mini_batches import mean_history, mini_batches
from workers.engines import LossFn, LossNorm
from workers.losses.aggregation import LossAgg
from workers.losses.value import value_loss
from workers.roles.colocation import ensure_train_mode, register_engine
from workers.roles.engine_specs import optim_spec, role_engine
from workers.roles.rng_state import load_rng_state, save_rng_state
from workers.runtime import Dispatch, Worker, WorkerContext, register

# engine metric -> logged name (the engine reports these for every optimizer step)
_ENGINE_METRICS = {"loss": "critic/vf_loss", "grad_norm": "critic/grad_norm", "lr": "critic/lr",
                   "step_skipped": "critic/step_skipped", "param_norm": "critic/param_norm"}


def critic_optimizer_steps(cfg: DictConfig) -> int:
    """Optimizer steps over the run: mini-batches per step x critic epochs x RL steps."""
    per_step = cfg.data.train_batch_size // cfg.actor.ppo_mini_batch_size
    return cfg.trainer.total_steps * per_step * cfg.critic.ppo_epochs


def make_critic_loss(cfg: DictConfig) -> LossFn:
    """Clipped value loss around the values the advantages were computed with (batch key `values`).

    Batch tensors stay on the host until here, so they are moved to the value head's device.
    """
    mode = cfg.critic.loss_agg_mode
    constant = float(cfg.rollout.max_new_tokens) if mode == "seq-mean-token-sum-norm" else None

    def loss_fn(outputs: dict[str, Tensor], mb: Batch, norm: LossNorm) -> tuple[Tensor, Mapping[str, Tensor]]:
        values = outputs["values"]
        old, returns, mask = (mb[k].to(values.device) for k in ("values", "returns", "response_mask"))
        agg = LossAgg(mode, norm.global_tokens, norm.global_seqs, constant)
        loss, metrics = value_loss(values, old, returns, mask, cliprange_value=cfg.critic.cliprange_value, agg=agg)
        return loss, {"critic/vf_clipfrac": metrics["vf_clipfrac"], "critic/values_mean": metrics["vpred_mean"]}

    return loss_fn


class CriticWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig):
        super().__init__(ctx)
        self.cfg = cfg
        self.engine = role_engine(cfg, ctx.device, cfg.critic.model_path, "value",
                                  optim_spec(cfg.critic.optim, critic_optimizer_steps(cfg)),
                                  max_tokens=cfg.critic.max_tokens_per_micro_batch)
        register_engine("critic", self.engine)
        self.loss_fn = make_critic_loss(cfg)
        # its own stream (not the actor's), so adding a critic leaves the actor's mini-batch order unchanged
        self.shuffle_gen = torch.Generator().manual_seed(cfg.trainer.seed * 1000 + 500 + ctx.rank)

    @register(Dispatch.DP)
    def compute_values(self, batch: Batch) -> Batch:
        """`values` [B, R]: V of the state before each response token (the baseline GAE needs)."""
        ensure_train_mode()
        values = self.engine.compute_values(batch, micro_batch_size=self.cfg.critic.micro_batch_size)
        return Batch.from_dict({"values": values})

    @register(Dispatch.DP)
    def update_critic(self, batch: Batch) -> dict[str, float]:
        """Critic epochs over this rank's rows, one optimizer step per mini-batch (the actor's mini-batches)."""
        ensure_train_mode()
        history: dict[str, list[float]] = {}
        for mini in mini_batches(batch, num_mini=self.cfg.data.train_batch_size // self.cfg.actor.ppo_mini_batch_size,
                                 epochs=self.cfg.critic.ppo_epochs, shuffle=self.cfg.actor.shuffle_mini_batches,
                                 generator=self.shuffle_gen):
            metrics = self.engine.train_mini_batch(mini, self.loss_fn, micro_batch_size=self.cfg.critic.micro_batch_size,
                                                   temperature=None, with_entropy=False)
            for k, v in metrics.items():
                history.setdefault(_ENGINE_METRICS.get(k, k), []).append(float(v))
        return mean_history(history)

    @register(Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, directory: str) -> dict[str, int]:
        """Collective; returns this rank's view of what every rank wrote (the driver checks it is shared)."""
        ensure_train_mode()
        self.engine.save_checkpoint(directory)
        save_rng_state(directory, self.rank, {"shuffle": self.shuffle_gen})
        return checkpoint_view(directory)

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, directory: str) -> None:
        ensure_train_mode()
        self.engine.load_checkpoint(directory)
        load_rng_state(directory, self.rank, {"shuffle": self.shuffle_gen})
