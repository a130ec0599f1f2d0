"""What Megatron-core 0.16 needs to run on a CPU host (gloo): applied once, only where CUDA is absent.

Megatron-core assumes CUDA in a few places that have nothing to do with the math:
- `torch.cuda.current_device()` as the device of new tensors (rotary tables, TP buffers,
  pipeline receive buffers): answered with the CPU device;
- `torch.cuda.synchronize()` after pipeline send/receive: a no-op (CPU ops are synchronous);
- `device="cuda"` literals in the pipeline schedules (a token counter) and in the default
  causal mask: those modules see a `torch` whose tensor factories put "cuda" tensors on the CPU
  (the engine passes its own causal mask anyway).
(The engine installs Megatron's no-op RNG tracker on every device: dropout is always off.)

Nothing else in the process is affected on a GPU host: `apply_cpu_shims` returns at once there.
"""
from __future__ import annotations

import types
from typing import Any

import torch

_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "triu", "tril")
_applied = False


def _on_cpu(device: Any) -> Any:
    if device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda"):
        return torch.device("cpu")
    return device


class _TorchOnCpu(types.ModuleType):
    """`torch`, except that its tensor factories build "cuda" tensors on the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        if name not in _FACTORIES:
            return value

        def factory(*args: Any, **kwargs: Any) -> Any:
            if "device" in kwargs:
                kwargs["device"] = _on_cpu(kwargs["device"])
            return value(*args, **kwargs)

        return factory


def apply_cpu_shims() -> bool:
    """Patch Megatron for CPU hosts; returns whether anything was patched (False on CUDA hosts)."""
    global _applied
    if torch.cuda.is_available():
        return False
    if _applied:
        return True
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.transformer import utils as transformer_utils

    torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]
    schedules.torch = _TorchOnCpu()
    transformer_utils.torch = _TorchOnCpu()
    _applied = True
    return True
