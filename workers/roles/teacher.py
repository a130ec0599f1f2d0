"""The frozen teacher of on-policy distillation (algorithm=opd): its log-probs of the student's own samples.

It has its own checkpoint (teacher.path), which may be larger than the student, and always runs on FSDP2:
the actor's Megatron layout (backend=megatron) describes the student's shape, not the teacher's.
"""
from __future__ import annotations

from omegaconf import DictConfig

from workers.batch import Batch
from workers.roles.frozen_scorer import FrozenScorer
from workers.runtime import Dispatch, WorkerContext, register


class TeacherWorker(FrozenScorer):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig):
        super().__init__(ctx, cfg, role="teacher", model_path=cfg.teacher.path, megatron=None,
                         max_tokens=cfg.teacher.max_tokens_per_micro_batch,
                         micro_batch_size=cfg.teacher.log_prob_micro_batch_size)

    @register(Dispatch.DP_MESH)
    def compute_teacher_log_prob(self, batch: Batch) -> Batch:
        return Batch.from_dict({"teacher_log_probs": self.score_tokens(batch)})
