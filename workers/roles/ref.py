"""The frozen reference policy: log-probs for the KL term, no optimizer, no gradients."""
from __future__ import annotations

from omegaconf import DictConfig

from workers.batch import Batch
from workers.roles.colocation import ensure_train_mode, register_engine
from workers.roles.engine_specs import role_engine
from workers.rollout.base import scoring_temperature
from workers.runtime import Dispatch, Worker, WorkerContext, register


class RefWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig):
        super().__init__(ctx)
        self.cfg = cfg
        self.engine = role_engine(cfg, ctx.device, cfg.model.path, "causal_lm", optim=None, megatron=cfg.ref.megatron,
                                  max_tokens=cfg.ref.max_tokens_per_micro_batch)
        register_engine("ref", self.engine)

    @register(Dispatch.ONE_TO_ALL)
    def mesh_info(self) -> dict:
        return self.engine.mesh.dispatch_info()

    @register(Dispatch.DP_MESH)
    def compute_ref_log_prob(self, batch: Batch) -> Batch:
        ensure_train_mode()
        out = self.engine.compute_log_probs(batch, temperature=scoring_temperature(self.cfg.rollout.temperature),
                                            micro_batch_size=self.cfg.ref.log_prob_micro_batch_size,
                                            with_entropy=False)
        return Batch.from_dict({"ref_log_probs": out["log_probs"]})
