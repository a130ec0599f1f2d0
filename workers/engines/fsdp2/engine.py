"""FSDPEngine: the training/inference engine behind the actor, ref, critic and reward-model roles.

One object per role per rank. torch.distributed must already be initialised (the worker
runtime does it); every method is collective over the data-parallel group, so all ranks
call it with the same number of rows.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup
from transformers import PretrainedConfig

from hybrid_engine import TrainingStateOffloader, WeightStream
from hybrid_engine.training_state import OffloadsWithOffloader
from hybrid_engine.names import tied_aliases
from workers.batch import Batch
from workers.engines import LossFn
from workers.engines.base import EngineMesh
from workers.engines.fsdp2 import checkpoint
from workers.engines.fsdp2.build import build_mesh, fill_from_rank0, load_hf_model, shard_model
from workers.engines.fsdp2.collectives import split_micro_batches
from workers.engines.fsdp2.forward import check_layout, model_forward
from workers.engines.fsdp2.gather_once import weights_gathered
from workers.engines.fsdp2.optim import apply_hyperparameters, build_lr_scheduler, build_optimizer
from workers.engines.fsdp2.spec import FSDPEngineSpec, OptimSpec
from workers.engines.fsdp2.train_step import loss_norm, train_mini_batch
from workers.engines.prompt_sharing import DEFAULT_MAX_ROW_TOKENS


class FSDPEngine(OffloadsWithOffloader):
    """An HF model sharded with FSDP2, plus (if `optim` is given) AdamW and its LR schedule.

    optim=None makes a frozen engine (ref policy, reward model): no optimizer, every
    parameter has requires_grad=False, and train_mini_batch refuses to run.
    Implements workers.engines.base.TrainingEngine; roles use nothing else. Attributes for
    the engine's own tests: `module` (the FSDP2 root), `optimizer`, `lr_scheduler`, `hf_config`.
    """

    def __init__(
        self,
        spec: FSDPEngineSpec,
        optim: OptimSpec | None,
        *,
        device: torch.device,
        dp_group: ProcessGroup | None = None,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError("FSDPEngine needs torch.distributed initialised by the worker runtime")
        self.spec = spec
        self.optim_spec = optim
        self.device = torch.device(device)
        self.dp_group = dp_group
        self.dp_size = dist.get_world_size(dp_group)
        # over the whole world, only rank 0 reads the checkpoint (host memory does not grow with ranks per node)
        from_rank0 = dist.get_world_size() > 1 and self.dp_size == dist.get_world_size()
        model = load_hf_model(spec, on_meta=from_rank0 and dist.get_rank() != 0)
        full_state = model.state_dict() if from_rank0 and dist.get_rank() == 0 else {}
        if optim is None:
            model.requires_grad_(False)
        self.hf_config: PretrainedConfig = model.config
        self.module = shard_model(model, spec, build_mesh(self.device, dp_group), self.device)
        if from_rank0:
            fill_from_rank0(self.module, full_state, self.device)
        del full_state
        self.optimizer = build_optimizer(self.module.parameters(), optim) if optim is not None else None
        self.lr_scheduler = build_lr_scheduler(self.optimizer, optim) if self.optimizer is not None else None
        self.offloader = TrainingStateOffloader.for_device(self.module, self.optimizer, self.device)
        self.mesh = EngineMesh(dp_rank=dist.get_rank(dp_group), dp_size=self.dp_size)

    # --- inference ---------------------------------------------------------------------

    def _forward_fn(self, temperature: float | None, with_entropy: bool) -> Callable[[Batch], dict[str, Tensor]]:
        def forward(mb: Batch) -> dict[str, Tensor]:
            return model_forward(
                self.module, self.spec.model_kind, mb, self.device, temperature=temperature, with_entropy=with_entropy,
                remove_padding=self.spec.remove_padding, share_prompts=self._share_prompts,
                max_row_tokens=self._max_row_tokens, varlen=self.spec.attn_implementation == "varlen",
            )

        return forward

    @torch.no_grad()
    def _infer(self, batch: Batch, micro_batch_size: int, forward: Callable[[Batch], dict[str, Tensor]]) -> dict[str, Tensor]:
        plans = self._micro_batches(batch, micro_batch_size)
        with weights_gathered(self.module, enabled=self._gather_once and len(plans) > 1,
                              reshard_after_forward=self.spec.reshard_after_forward):
            outs = [forward(mb) for _, mb in plans]
        back = torch.argsort(torch.cat([rows for rows, _ in plans]))  # micro-batch order -> the batch's order
        return {k: torch.cat([o[k] for o in outs]).cpu()[back] for k in outs[0]}

    @property
    def _share_prompts(self) -> bool:
        return self.spec.share_prompts and self.spec.model_kind == "causal_lm"

    @property
    def _max_row_tokens(self) -> int:
        return self.spec.max_tokens_per_micro_batch or DEFAULT_MAX_ROW_TOKENS

    @property
    def _gather_once(self) -> bool:
        return self.spec.gather_once and not self.spec.cpu_offload  # offloaded weights stay sharded on the host

    def _micro_batches(self, batch: Batch, micro_batch_size: int, *,
                       keep_order: bool = False) -> list[tuple[Tensor, Batch]]:
        """keep_order: consecutive rows in order, `micro_batch_size` at a time, for a loss that reads rows
        together (the Bradley-Terry loss pairs row 2i with 2i+1); no length sorting, no token budget."""
        if keep_order and self.spec.max_tokens_per_micro_batch is not None:
            raise ValueError("max_tokens_per_micro_batch would split the (chosen, rejected) row pairs that "
                             "reward-model training reads together; leave it null for this engine")
        return split_micro_batches(batch, micro_batch_size, self.dp_group, self.device,
                                   max_tokens=self.spec.max_tokens_per_micro_batch,
                                   by_length=self.spec.remove_padding and not keep_order,
                                   share_prompts=self._share_prompts and not keep_order,
                                   max_row_tokens=self._max_row_tokens,
                                   packed=self.spec.attn_implementation == "varlen")

    def _require_kind(self, kind: str, what: str) -> None:
        if self.spec.model_kind != kind:
            raise ValueError(f"{what} needs a {kind!r} engine, this one is {self.spec.model_kind!r}")

    def compute_log_probs(
        self, batch: Batch, *, temperature: float, micro_batch_size: int, with_entropy: bool
    ) -> dict[str, Tensor]:
        """`log_probs` [B, R] (and `entropy` [B, R]) of the response tokens, float32 on CPU."""
        self._require_kind("causal_lm", "compute_log_probs")
        check_layout(batch)
        return self._infer(batch, micro_batch_size, self._forward_fn(temperature, with_entropy))

    def compute_values(self, batch: Batch, *, micro_batch_size: int) -> Tensor:
        """Values [B, R], float32 on CPU: V of the state before each response token."""
        self._require_kind("value", "compute_values")
        check_layout(batch)
        return self._infer(batch, micro_batch_size, self._forward_fn(None, False))["values"]

    def compute_scores(self, batch: Batch, *, micro_batch_size: int) -> Tensor:
        """Scores [B], float32 on CPU: the reward head at each row's last attended token."""
        self._require_kind("reward", "compute_scores")
        return self._infer(batch, micro_batch_size, self._forward_fn(None, False))["scores"]

    # --- training ----------------------------------------------------------------------

    def train_mini_batch(
        self,
        batch: Batch,
        loss_fn: LossFn,
        *,
        micro_batch_size: int,
        temperature: float | None,
        with_entropy: bool,
    ) -> dict[str, float]:
        """One optimizer step on this rank's share of a mini-batch (see train_step.train_mini_batch).

        temperature/with_entropy shape the causal-LM outputs given to loss_fn (None/False for
        value and reward models).
        """
        if self.optimizer is None or self.lr_scheduler is None or self.optim_spec is None:
            raise RuntimeError("train_mini_batch on a frozen engine (built with optim=None)")
        if self.spec.model_kind != "reward":
            check_layout(batch)
        return train_mini_batch(
            self.module,
            self.optimizer,
            self.lr_scheduler,
            self._forward_fn(temperature, with_entropy),
            loss_fn,
            self._micro_batches(batch, micro_batch_size, keep_order=self.spec.model_kind == "reward"),
            norm=loss_norm(batch, self.dp_group, self.dp_size, self.device),
            grad_clip=self.optim_spec.grad_clip,
            group=self.dp_group,
            dp_size=self.dp_size,
            device=self.device,
            gather_once=self._gather_once,
            reshard_after_forward=self.spec.reshard_after_forward,
        )

    # --- hybrid engine: offload (OffloadsWithOffloader) and weight export ----------------

    def export_weights(self, *, dtype: torch.dtype, bucket_bytes: int, consumer: bool) -> WeightStream:
        """HF-named full tensors, bucket by bucket (collective: every rank iterates to the end)."""
        return WeightStream(self.module, bucket_bytes=bucket_bytes, dtype=dtype, consumer=consumer)

    # --- checkpoints -------------------------------------------------------------------

    def save_checkpoint(self, directory: str) -> None:
        """Collective: HF weights + optimizer + LR scheduler into `directory` (rank 0 writes)."""
        checkpoint.save_checkpoint(
            directory,
            module=self.module,
            optimizer=self.optimizer,
            scheduler=self.lr_scheduler,
            hf_config=self.hf_config,
            group=self.dp_group,
        )

    def load_checkpoint(self, directory: str) -> None:
        """Collective: restore what save_checkpoint wrote (weights only for a frozen engine)."""
        checkpoint.load_checkpoint(
            directory,
            module=self.module,
            optimizer=self.optimizer,
            scheduler=self.lr_scheduler,
            group=self.dp_group,
            device=self.device,
            aliases=tied_aliases(self.module),
        )
        if self.optimizer is not None and self.lr_scheduler is not None and self.optim_spec is not None:
            apply_hyperparameters(self.optimizer, self.lr_scheduler, self.optim_spec)
