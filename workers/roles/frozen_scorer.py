"""A frozen causal LM that scores sampled tokens: the base of the reference policy and the teacher.

No optimizer and no gradients; colocated with the actor it registers its engine so the hybrid engine offloads
it while this process rolls out.
"""
from __future__ import annotations

from omegaconf import DictConfig

from workers.batch import Batch
from workers.roles.colocation import ensure_train_mode, register_engine
from workers.roles.engine_specs import role_engine
from workers.rollout.base import scoring_temperature
from workers.runtime import Dispatch, Worker, WorkerContext, register


class FrozenScorer(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig, *, role: str, model_path: str,
                 megatron: DictConfig | None, max_tokens: int | None, micro_batch_size: int):
        super().__init__(ctx)
        self.cfg = cfg
        self.micro_batch_size = micro_batch_size
        self.engine = role_engine(cfg, ctx.device, model_path, "causal_lm", optim=None, megatron=megatron,
                                  max_tokens=max_tokens)
        register_engine(role, self.engine)

    @register(Dispatch.ONE_TO_ALL)
    def mesh_info(self) -> dict:
        return self.engine.mesh.dispatch_info()

    def score_tokens(self, batch: Batch):
        """log p(y_t) of the response tokens, at the temperature the rollout sampled with (as pi_old is)."""
        ensure_train_mode()
        out = self.engine.compute_log_probs(batch, temperature=scoring_temperature(self.cfg.rollout.temperature),
                                            micro_batch_size=self.micro_batch_size, with_entropy=False)
        return out["log_probs"]
