"""Reward-model training (`baton rm`): the FSDP2 engine on a sequence-classification model,
Bradley-Terry loss over (chosen, rejected) pairs.

The driver sends one row per pair (keys `chosen_*` / `rejected_*`), so the data-parallel split
never separates a pair; here each pair becomes two adjacent rows, and an even micro-batch size
keeps both in the same micro-batch.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from workers.batch import Batch
from workers.losses.bradley_terry import bradley_terry_loss, split_pairs
from workers.roles.engine_specs import optim_spec, role_engine
from workers.runtime import Dispatch, Worker, WorkerContext, register

ROW_KEYS: tuple[str, ...] = ("input_ids", "attention_mask", "position_ids", "response_mask")


def interleave_pairs(pairs: Batch) -> Batch:
    """[chosen_0, rejected_0, chosen_1, ...] rows from one row per pair (both sides padded alike)."""
    return Batch.from_dict({k: torch.stack([pairs[f"chosen_{k}"], pairs[f"rejected_{k}"]], dim=1).flatten(0, 1)
                            for k in ROW_KEYS})


class RMTrainerWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig):
        super().__init__(ctx)
        self.cfg = cfg
        self.engine = role_engine(cfg, ctx.device, cfg.rm.base_model_path, "reward",
                                  optim_spec(cfg.rm.optim, cfg.rm.steps))

    @register(Dispatch.DP)
    def train_step(self, pairs: Batch) -> dict[str, float]:
        return self.engine.train_mini_batch(interleave_pairs(pairs), bradley_terry_loss,
                                            micro_batch_size=self.cfg.rm.micro_batch_size, temperature=None,
                                            with_entropy=False)

    @register(Dispatch.DP)
    def score_pairs(self, pairs: Batch) -> Batch:
        scores = self.engine.compute_scores(interleave_pairs(pairs), micro_batch_size=self.cfg.rm.micro_batch_size)
        chosen, rejected = split_pairs(scores)
        return Batch.from_dict({"chosen_scores": chosen, "rejected_scores": rejected})

    @register(Dispatch.ONE_TO_ALL)
    def save(self, directory: str) -> None:
        """HF weights + config, naming the sequence-classification class (the base was a causal LM)."""
        # fully_shard swaps the module's class for a subclass named "FSDP" + the HF class name
        self.engine.hf_config.architectures = [type(self.engine.module).__name__.removeprefix("FSDP")]
        self.engine.save_checkpoint(directory)
