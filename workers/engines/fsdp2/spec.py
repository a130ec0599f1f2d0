"""What an FSDP2 engine is built from: frozen specs filled from the Hydra config.

Every knob is a field without a default, so the YAML is the one place a value is chosen;
a bad value fails here, at construction, before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

from workers.dtypes import to_dtype

# causal_lm: actor / ref / SFT (AutoModelForCausalLM) -> log-probs, entropy
# value:     critic (AutoModelForTokenClassification, num_labels=1) -> per-token values
# reward:    reward model (AutoModelForSequenceClassification, num_labels=1) -> one score per row
MODEL_KINDS: tuple[str, ...] = ("causal_lm", "value", "reward")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
@dataclass(frozen=True)
class FSDPEngineSpec:
    """How to load, shard and run one model.

    model_path: HF model directory (config.json + weights) or hub id.
    model_kind: one of MODEL_KINDS; picks the HF auto class and the forward outputs.
    master_dtype: dtype of the sharded parameters and hence of the optimizer state
        ("float32" for trained roles; a frozen ref may use "bfloat16" to halve memory).
    param_dtype: compute dtype: FSDP all-gathers parameters in this dtype for forward/backward.
    reduce_dtype: dtype of the gradient reduce-scatter ("float32" keeps bf16 training stable).
    reshard_after_forward: free gathered layer weights after forward (saves memory, costs a
        second all-gather in backward).
    activation_checkpointing: recompute each decoder layer in backward instead of storing it.
    cpu_offload: keep sharded parameters, gradients and optimizer state in host memory.
    attn_implementation: HF attention kernel ("sdpa", "eager", "flash_attention_2"), or "varlen": with
        remove_padding, each micro-batch runs as one packed sequence with row boundaries
        (workers/engines/varlen.py: flash varlen on CUDA in half precision, per-row SDPA otherwise).
    remove_padding: run forwards on rows shifted to drop their padding (workers/engines/compaction.py);
        outputs equal the padded path's, micro-batches are formed from rows of similar length.
    share_prompts: causal LMs with remove_padding: rows with the same prompt run as one packed row,
        the prompt computed once (workers/engines/prompt_sharing.py); same outputs.
    max_tokens_per_micro_batch: also cut micro-batches at this many tokens (rows x longest row,
        or x full width when padded); None: rows only. Same loss and gradients under any budget.
    gather_once: over several micro-batches, gather the weights once and reduce the gradients once
        (workers/engines/fsdp2/gather_once.py); full-size weights and grads per rank meanwhile.
    seed: seeds torch before loading, so freshly initialised heads (a critic's value head)
        are identical on every rank and across runs.
    """

    model_path: str
    model_kind: str
    master_dtype: str
    param_dtype: str
    reduce_dtype: str
    reshard_after_forward: bool
    activation_checkpointing: bool
    cpu_offload: bool
    attn_implementation: str
    remove_padding: bool
    max_tokens_per_micro_batch: int | None
    gather_once: bool
    seed: int
    share_prompts: bool = False

    def __post_init__(self) -> None:
        if self.model_kind not in MODEL_KINDS:
            raise ValueError(f"unknown model_kind {self.model_kind!r}; known: {', '.join(MODEL_KINDS)}")
        if self.max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch < 1:
            raise ValueError(f"max_tokens_per_micro_batch must be >= 1 or None, got {self.max_tokens_per_micro_batch}")
        if self.share_prompts and not self.remove_padding:
            raise ValueError("share_prompts packs rows with their padding removed: it needs remove_padding=True")
        if self.attn_implementation == "varlen" and not self.remove_padding:
            raise ValueError("attn_implementation='varlen' packs rows with their padding removed: it needs remove_padding=True")
        for name in ("master_dtype", "param_dtype", "reduce_dtype"):
            to_dtype(getattr(self, name))


@dataclass(frozen=True)
class OptimSpec:
    """AdamW and its LR schedule; one scheduler step per optimizer step.

    lr: peak learning rate.
    betas, eps, weight_decay: AdamW's (decoupled weight decay, applied to every parameter).
    grad_clip: clip the global L2 gradient norm to this; None disables clipping (the norm
        is still computed and reported, and a non-finite norm still skips the step).
    warmup_steps: linear warm-up: step s < warmup_steps uses lr * (s + 1) / warmup_steps, so the
        first step already moves the weights.
    total_steps: optimizer steps in the whole run; the cosine schedule reaches its floor here.
    schedule: "constant" (after warm-up) or "cosine" (from lr down to lr * min_lr_ratio).
    min_lr_ratio: cosine floor as a fraction of lr (read only by "cosine").
    """

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    grad_clip: float | None
    warmup_steps: int
    total_steps: int
    schedule: str
    min_lr_ratio: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))  # YAML gives a list
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two values, got {self.betas}")
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0, eps > 0, weight_decay >= 0; got {self.lr}, {self.eps}, {self.weight_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; known: {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps, got {self.warmup_steps}, {self.total_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
