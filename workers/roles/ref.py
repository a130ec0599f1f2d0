"""The frozen reference policy: log-probs for the KL term, no optimizer, no gradients."""
from __future__ import annotations

from omegaconf import DictConfig

from workers.batch import Batch
from workers.roles.frozen_scorer import FrozenScorer
from workers.runtime import Dispatch, WorkerContext, register


class RefWorker(FrozenScorer):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig):
        super().__init__(ctx, cfg, role="ref", model_path=cfg.model.path, megatron=cfg.ref.megatron,
                         max_tokens=cfg.ref.max_tokens_per_micro_batch,
                         micro_batch_size=cfg.ref.log_prob_micro_batch_size)

    @register(Dispatch.DP_MESH)
    def compute_ref_log_prob(self, batch: Batch) -> Batch:
        return Batch.from_dict({"ref_log_probs": self.score_tokens(batch)})
