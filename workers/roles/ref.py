"""The frozen reference policy: log-probs for the KL term, no optimizer, no gradients."""
from __future__ import annotations

from omegaconf import DictConfig

from workers.batch import Batch
from workers.roles.engine_specs import role_engine
from workers.runtime import Dispatch, Worker, WorkerContext, register


class RefWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig):
        super().__init__(ctx)
        self.cfg = cfg
        self.engine = role_engine(cfg, ctx.device, cfg.model.path, "causal_lm", optim=None)

    @register(Dispatch.DP)
    def compute_ref_log_prob(self, batch: Batch) -> Batch:
        temperature = self.cfg.rollout.temperature if self.cfg.rollout.temperature > 0 else 1.0
        out = self.engine.compute_log_probs(batch, temperature=temperature,
                                            micro_batch_size=self.cfg.ref.log_prob_micro_batch_size,
                                            with_entropy=False)
        return Batch.from_dict({"ref_log_probs": out["log_probs"]})
