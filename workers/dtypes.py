"""The one map from config dtype names to torch dtypes (engines, rollout engines, benchmarks)."""
from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def to_dtype(name: str) -> torch.dtype:
    """The torch dtype for a config string; an unknown name fails with the known list."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None
