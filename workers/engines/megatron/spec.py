"""What a Megatron engine is built from: a frozen spec filled from the Hydra config (no defaults here)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MegatronEngineSpec:
    """model_path: HF Llama/Qwen2 directory the stage weights are converted from.
    model_kind: "causal_lm" (the Megatron backend runs the policy and the reference).
    compute_dtype: "float32" | "bfloat16" (trained roles keep fp32 master weights in the optimizer).
    tensor_model_parallel_size / pipeline_model_parallel_size: the mesh; data parallel is what is left.
    sequence_parallel: split the sequence of norms and dropout-free regions over TP ranks (needs TP > 1).
    remove_padding: rows sorted by length into micro-batches, each cut to its longest real row
        (workers/engines/megatron/batching.py); with pipeline parallelism, to the batch's longest row,
        since the stages exchange one fixed shape. Same outputs as the padded rows.
    """

    model_path: str
    model_kind: str
    compute_dtype: str
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    sequence_parallel: bool
    remove_padding: bool
