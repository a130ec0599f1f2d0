"""The reward model: a frozen FSDP2 sequence-classification model (from `baton rm`) that scores
each prompt + response with one float, read at the row's last attended token."""
from __future__ import annotations

from omegaconf import DictConfig

from workers.batch import Batch
from workers.roles.colocation import ensure_train_mode, register_engine
from workers.roles.engine_specs import role_engine
from workers.runtime import Dispatch, Worker, WorkerContext, register


class RewardModelWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig):
        super().__init__(ctx)
        self.cfg = cfg
        self.engine = role_engine(cfg, ctx.device, cfg.reward.reward_model.path, "reward", optim=None,
                                  max_tokens=cfg.reward.reward_model.max_tokens_per_micro_batch)
        register_engine("reward_model", self.engine)

    @register(Dispatch.DP)
    def compute_rm_score(self, batch: Batch) -> Batch:
        """`rm_scores` [B]: the score of prompt + response (the response's last valid token, EOS included)."""
        ensure_train_mode()
        scores = self.engine.compute_scores(batch, micro_batch_size=self.cfg.reward.reward_model.micro_batch_size)
        return Batch.from_dict({"rm_scores": scores})
