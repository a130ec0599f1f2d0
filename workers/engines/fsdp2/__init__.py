"""FSDP2 (`fully_shard`) engine: load an HF model, shard it per decoder layer, run forwards,
take optimizer steps, save/load HF-format checkpoints. Works on CPU (gloo) and GPU (nccl)."""
from workers.engines.fsdp2.engine import FSDPEngine
from workers.engines.fsdp2.spec import MODEL_KINDS, FSDPEngineSpec, OptimSpec

__all__ = ["MODEL_KINDS", "FSDPEngine", "FSDPEngineSpec", "OptimSpec"]
