"""The built-in engine's fused CPU forward (C++) for prefill and decode, built on first use and cached.

`decode_step.cpp` runs a whole prefill or decode step in one call; this module compiles it with
torch's extension builder (g++ and ninja; ~1 minute once, then cached under
`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions) and wraps it with the same
`prefill` / `decode` interface as `CompactDecoder`, so the decode loop does not care
which one it drives.
"""
from __future__ import annotations

import hashlib
import platform
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from workers.rollout.builtin.kv_cache import KVCache
from workers.rollout.builtin.model import CompactDecoder

_SOURCE = Path(__file__).with_name("decode_step.cpp")
SLOT_BLOCK = 16  # attention scores this many cache slots per vector op: the KV cache length must be a multiple
_lock = threading.Lock()
_module: ModuleType | None = None


class CppKernelsUnavailable(RuntimeError):
    """The C++ decode step cannot be built or used here (no compiler, not a CPU device, ...)."""


def _cpu_tag() -> str:
    """Built with -march=native, so the cached binary is keyed by the CPU's feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha1(f"{platform.machine()}|{flags}".encode()).hexdigest()[:10]


def load_extension(verbose: bool = False) -> ModuleType:
    """Compile (first call on this machine) or load the cached extension; CppKernelsUnavailable says why not."""
    global _module
    with _lock:
        if _module is not None:
            return _module
        from torch.utils.cpp_extension import load

        try:
            _module = load(
                name=f"baton_cpu_decode_{_cpu_tag()}",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=verbose,
            )
        except Exception as exc:  # no compiler / ninja, or a compile error: torch's message says which
            raise CppKernelsUnavailable(f"builtin rollout: building {_SOURCE.name} failed: {exc}") from exc
        return _module


def bf16_matmul_supported() -> bool:
    """Whether oneDNN runs bf16 matmuls on this CPU (it refuses to pack bf16 weights otherwise, e.g. on AVX2)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _packed(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """oneDNN's blocked layout for `weight` [out, in]: packed once per weight load instead of per matmul."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


def _or_empty(t: torch.Tensor | None) -> torch.Tensor:
    return t.detach() if t is not None else torch.empty(0)


class FusedCpuDecoder:
    """CompactDecoder's interface with decode in C++; call `pack()` after the weights change."""

    def __init__(self, model: CompactDecoder, max_batch: int, paired_bf16: bool = True) -> None:
        """paired_bf16: bf16 attention on AVX512-BF16 dot products when this CPU has them (False: the
        portable vector loops, which tests use to cover the path other CPUs take)."""
        if model.embed.device.type != "cpu":
            raise CppKernelsUnavailable(f"builtin rollout kernels=cpp runs on CPU only, model is on {model.embed.device}")
        if model.embed.dtype == torch.bfloat16 and not bf16_matmul_supported():
            raise CppKernelsUnavailable(
                "builtin rollout kernels=cpp: bf16 weights need oneDNN's bf16 matmul, which this CPU lacks (it needs "
                "AVX-512 BW/VL/DQ or AVX-NE-CONVERT); set rollout.dtype=float32, or rollout.kernels=torch")
        self.model = model
        self.max_batch = max_batch
        self._ext = load_extension()
        self.paired_bf16 = paired_bf16 and model.embed.dtype == torch.bfloat16 and self._ext.has_paired_bf16()
        self._decoder = None

    def pack(self) -> None:
        """(Re)build the C++ decoder from the model's current weights (packs every projection)."""
        m, s = self.model, self.model.spec
        layers = [
            [
                layer.input_norm.detach(),
                layer.post_norm.detach(),
                _packed(layer.qkv_w, self.max_batch),
                _packed(layer.o_w, self.max_batch),
                _packed(layer.gate_up_w, self.max_batch),
                _packed(layer.down_w, self.max_batch),
                _or_empty(layer.qkv_b),
                _or_empty(layer.o_b),
                _or_empty(layer.gate_up_b),
                _or_empty(layer.down_b),
            ]
            for layer in m.layers
        ]
        self._decoder = self._ext.CpuDecoder(
            m.embed.detach(),
            m.final_norm.detach(),
            _packed(m.lm_head, self.max_batch),
            m.rope_cos,
            m.rope_sin,
            layers,
            s.num_heads,
            s.num_kv_heads,
            s.head_dim,
            s.intermediate_size,
            float(s.rms_norm_eps),
            self.paired_bf16,
        )

    def invalidate(self) -> None:
        """The weights changed: repack before the next decode step (packing copies the projections)."""
        self._decoder = None

    @staticmethod
    def _check_cache(cache: KVCache) -> None:
        if not cache.kernel_layout or cache.max_len % SLOT_BLOCK:
            raise ValueError(f"builtin rollout kernels=cpp needs a KVCache with kernel_layout=True and "
                             f"max_len % {SLOT_BLOCK} == 0")

    def _forward(self) -> Any:
        if self._decoder is None:
            self.pack()
        return self._decoder.forward

    def prefill(
        self, input_ids: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """Left-padded prompts [n, P] into cache slots [0, P); last-token logits [n, V]."""
        self._check_cache(cache)
        return self._forward()(input_ids, positions, 0, cache.keys, cache.values, key_valid.contiguous())

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int, cache: KVCache, use_mask: bool) -> torch.Tensor:
        """One token per row into cache slot `slot`; logits [n, V]."""
        key_valid = cache.key_valid if use_mask else None
        return self._forward()(tokens[:, None], positions[:, None], slot, cache.keys, cache.values, key_valid)
