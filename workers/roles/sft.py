"""Supervised warm start: the same FSDP2 engine and train step as the actor, with the NLL loss."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from workers.batch import Batch
from workers.losses.sft import sft_loss
from workers.roles.engine_specs import optim_spec, role_engine
from workers.runtime import Dispatch, Worker, WorkerContext, register


class SFTWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig, base_model_path: str):
        super().__init__(ctx)
        self.cfg = cfg
        torch.manual_seed(cfg.trainer.seed)
        self.engine = role_engine(cfg, ctx.device, base_model_path, "causal_lm", optim_spec(cfg.sft.optim, cfg.sft.steps))

    @register(Dispatch.DP)
    def train_step(self, batch: Batch) -> dict[str, float]:
        return self.engine.train_mini_batch(batch, sft_loss, micro_batch_size=self.cfg.sft.micro_batch_size,
                                            temperature=1.0, with_entropy=False)

    @register(Dispatch.ONE_TO_ALL)
    def save(self, directory: str) -> None:
        self.engine.save_checkpoint(directory)

