"""AdamW for a Megatron model: fp32 master weights, gradients finalised over every parallel dimension.

Megatron's own optimizer (`get_megatron_optimizer`) allocates on CUDA, so this one is written
for both devices. Before a step, a rank's gradients are made whole:
- summed over the data-parallel group (each rank's loss is its share of the global loss);
- for a tied embedding split over pipeline stages, the embedding (first stage) and output
  layer (last stage) gradients summed over the embedding group, so both copies stay equal;
- with sequence parallelism, the gradients of TP-replicated weights (norms) summed over the
  tensor-parallel group, since each rank saw only its part of the sequence.
The gradient norm is taken over the whole model: TP-sharded tensors counted on every TP rank,
replicated ones once, each pipeline stage's own tensors once, summed over the model-parallel
group; so every rank clips by the same factor, as the FSDP2 engine does.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed import ProcessGroup

from workers.engines.fsdp2.optim import apply_hyperparameters, build_lr_scheduler
from workers.engines.fsdp2.spec import OptimSpec


def _is_tp_duplicate(param: nn.Parameter, tp_rank: int) -> bool:
    """A TP-replicated tensor counted on TP rank 0 only (Megatron marks sharded ones)."""
    return not getattr(param, "tensor_model_parallel", False) and tp_rank != 0


class MegatronOptimizer:
    def __init__(self, module: nn.Module, spec: OptimSpec, *, groups: "ParallelGroups", tied_copy: str | None):
        self.module, self.spec, self.groups = module, spec, groups
        self.params = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters")
        self.tied_copy = tied_copy  # name of this stage's copy of a tied embedding split over stages
        fp32 = all(p.dtype == torch.float32 for _, p in self.params)
        self.master = [p if fp32 else p.detach().float().clone().requires_grad_(True) for _, p in self.params]
        self.optimizer = torch.optim.AdamW(self.master, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                                           weight_decay=spec.weight_decay)
        self.scheduler = build_lr_scheduler(self.optimizer, spec)

    def zero_grad(self) -> None:
        for _, p in self.params:
            p.grad = None
        for m in self.master:
            m.grad = None

    @torch.no_grad()
    def _finalize_grads(self) -> None:
        g = self.groups
        for name, p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if g.dp_size > 1:
                dist.all_reduce(p.grad, group=g.dp)
            if self.tied_copy == name and g.embedding is not None:
                dist.all_reduce(p.grad, group=g.embedding)
            if g.sequence_parallel and getattr(p, "sequence_parallel", False):
                dist.all_reduce(p.grad, group=g.tp)

    @torch.no_grad()
    def _norm(self, tensors: list[tuple[str, nn.Parameter, Tensor]]) -> float:
        """Global L2 norm of `tensors` (one per parameter), in float64, identical on every rank."""
        g = self.groups
        total = torch.zeros((), dtype=torch.float64, device=g.device)
        for name, p, t in tensors:
            if _is_tp_duplicate(p, g.tp_rank) or (name == self.tied_copy and not g.is_first_stage):
                continue
            total += torch.linalg.vector_norm(t, dtype=torch.float64).square()
        if g.model_parallel_size > 1:
            dist.all_reduce(total, group=g.model_parallel)
        return math.sqrt(float(total)) if math.isfinite(float(total)) else float(total)

    @torch.no_grad()
    def step(self) -> dict[str, float]:
        """Finalise grads, clip by the global norm, step; `step_skipped` when the norm is not finite."""
        self._finalize_grads()
        grad_norm = self._norm([(n, p, p.grad) for n, p in self.params])
        lr = float(self.optimizer.param_groups[0]["lr"])
        finite = math.isfinite(grad_norm)
        if finite:
            coef = min(1.0, self.spec.grad_clip / (grad_norm + 1e-6)) if self.spec.grad_clip else 1.0
            for (_, p), m in zip(self.params, self.master):
                grad = p.grad.float() * coef
                if m is p:
                    p.grad = grad
                else:
                    m.grad = grad
            self.optimizer.step()
            for (_, p), m in zip(self.params, self.master):
                if m is not p:
                    p.copy_(m.to(p.dtype))
        self.zero_grad()
        self.scheduler.step()
        param_norm = self._norm([(n, p, m) for (n, p), m in zip(self.params, self.master)])
        return {"grad_norm": grad_norm, "lr": lr, "step_skipped": 0.0 if finite else 1.0, "param_norm": param_norm}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "master": [m.detach() for m in self.master]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for (_, p), m, saved in zip(self.params, self.master, state["master"]):
            m.copy_(saved)
            if m is not p:
                p.copy_(saved.to(p.dtype))
        apply_hyperparameters(self.optimizer, self.scheduler, self.spec)


class ParallelGroups:
    """This rank's process groups and coordinates (from Megatron's parallel_state)."""

    def __init__(self, device: torch.device, sequence_parallel: bool):
        from megatron.core import parallel_state as ps

        self.device = device
        self.sequence_parallel = sequence_parallel
        self.tp, self.pp, self.dp = (ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group(),
                                     ps.get_data_parallel_group())
        self.model_parallel = ps.get_model_parallel_group()
        self.tp_rank, self.tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
        self.pp_rank, self.pp_size = ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.model_parallel_size = self.tp_size * self.pp_size
        in_embedding = self.pp_size > 1 and ps.is_rank_in_embedding_group()
        self.embedding = ps.get_embedding_group() if in_embedding else None

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1
