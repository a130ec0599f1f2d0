"""The hybrid actor: FSDP2 policy + rollout engine in one process, time-sharing the device.

`generate` runs in ROLLOUT mode, everything that needs gradients or training weights in TRAIN
mode; the hybrid engine makes each switch (and streams the weights) exactly once.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from hybrid_engine import HybridEngine, WeightStream, group_param_diffs
from workers.batch import Batch
from workers.roles.mini_batches import mean_history, mini_batches
from workers.roles.actor_loss import make_actor_loss
from workers.roles.engine_specs import actor_optimizer_steps, optim_spec, role_engine
from workers.roles.rng_state import load_rng_state, save_rng_state
from workers.roles.rollout_worker import max_seq_len, rank_sampling
from workers.rollout.base import RolloutEngine, SamplingParams
from workers.rollout.factory import build_rollout
from workers.runtime import Dispatch, Worker, WorkerContext, register


class ActorRolloutWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig, pad_token_id: int):
        super().__init__(ctx)
        self.cfg = cfg
        torch.manual_seed(cfg.trainer.seed)
        self.engine = role_engine(cfg, ctx.device, cfg.model.path, "causal_lm",
                                  optim_spec(cfg.actor.optim, actor_optimizer_steps(cfg)))
        self.rollout = self._build_rollout(ctx, cfg, pad_token_id)
        self.hybrid = HybridEngine(
            self.engine.module, self.engine.optimizer, self.rollout, device=ctx.device,
            bucket_bytes=cfg.hybrid.bucket_bytes, weight_dtype=getattr(torch, cfg.rollout.dtype),
            offload_params=cfg.hybrid.offload_params, offload_optimizer=cfg.hybrid.offload_optimizer,
            is_rollout_consumer=self.rollout is not None,
        )
        self.loss_fn = make_actor_loss(cfg.actor, norm_constant=float(cfg.rollout.max_new_tokens))
        self.shuffle_gen = torch.Generator().manual_seed(cfg.trainer.seed * 1000 + ctx.rank)

    def _build_rollout(self, ctx: WorkerContext, cfg: DictConfig, pad_token_id: int) -> RolloutEngine | None:
        """This rank's own rollout engine (split placement's trainer has none: workers/roles/split_actor.py)."""
        return build_rollout(cfg.rollout, cfg.model.path, device=ctx.device, max_seq_len=max_seq_len(cfg),
                             pad_token_id=pad_token_id, seed=cfg.trainer.seed + ctx.rank)

    # --- rollout side -----------------------------------------------------------------

    @register(Dispatch.ONE_TO_ALL)
    def sync_weights(self) -> dict[str, float]:
        """Enter ROLLOUT mode: stream the current training weights into the rollout engine."""
        return self.hybrid.rollout_mode().to_metrics("sync")

    @register(Dispatch.DP)
    def generate(self, batch: Batch, params: SamplingParams) -> Batch:
        self.hybrid.rollout_mode()
        return self.rollout.generate(batch, rank_sampling(params, self.rank))

    # --- training side ----------------------------------------------------------------

    @register(Dispatch.ONE_TO_ALL)
    def train_mode(self) -> dict[str, float]:
        return self.hybrid.train_mode().to_metrics("to_train")

    @register(Dispatch.DP)
    def compute_log_prob(self, batch: Batch) -> Batch:
        """Old log-probs (and entropy) under the training engine, at the rollout temperature."""
        self.hybrid.train_mode()
        out = self.engine.compute_log_probs(
            batch, temperature=_logprob_temperature(self.cfg), micro_batch_size=self.cfg.actor.log_prob_micro_batch_size,
            with_entropy=True)
        return Batch.from_dict({"old_log_probs": out["log_probs"], "entropy": out["entropy"]})

    @register(Dispatch.DP)
    def update_actor(self, batch: Batch) -> dict[str, float]:
        """PPO epochs over this rank's rows, one optimizer step per mini-batch."""
        self.hybrid.train_mode()
        history: dict[str, list[float]] = {}
        for mini in mini_batches(batch, num_mini=self.cfg.data.train_batch_size // self.cfg.actor.ppo_mini_batch_size,
                                 epochs=self.cfg.actor.ppo_epochs, shuffle=self.cfg.actor.shuffle_mini_batches,
                                 generator=self.shuffle_gen):
            metrics = self.engine.train_mini_batch(mini, self.loss_fn, micro_batch_size=self.cfg.actor.micro_batch_size,
                                                   temperature=_logprob_temperature(self.cfg), with_entropy=True)
            for k, v in metrics.items():
                history.setdefault(k if "/" in k else f"actor/{k}", []).append(float(v))
        return mean_history(history)

    # --- checkpoints and diagnostics --------------------------------------------------

    @register(Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, directory: str) -> None:
        self.hybrid.train_mode()
        self.engine.save_checkpoint(directory)
        save_rng_state(directory, self.rank, {"shuffle": self.shuffle_gen})

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, directory: str) -> None:
        self.hybrid.train_mode()
        self.engine.load_checkpoint(directory)
        load_rng_state(directory, self.rank, {"shuffle": self.shuffle_gen})

    @register(Dispatch.ONE_TO_ALL)
    def weight_group_diffs(self) -> dict[str, float]:
        """Largest |trainer - rollout| per parameter group (needs a rollout engine that exposes weights)."""
        stream = WeightStream(self.engine.module, bucket_bytes=self.cfg.hybrid.bucket_bytes,
                              dtype=getattr(torch, self.cfg.rollout.dtype), consumer=True)
        reference = (pair for bucket in stream for pair in bucket)
        if not hasattr(self.rollout, "hf_weight"):
            for _ in reference:  # every rank must still join the gathers
                pass
            return {}
        return group_param_diffs(reference, self.rollout.hf_weight)


def _logprob_temperature(cfg: DictConfig) -> float:
    """Log-probs are taken under softmax(logits / T) of the sampling temperature (T=0: greedy, scored at 1)."""
    return cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
