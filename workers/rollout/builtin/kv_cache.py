"""Preallocated KV cache for batched decoding of left-padded rows.

One tensor [layers, 2, max_batch, kv_heads, max_len, head_dim] allocated once (on wake
or first use) and freed on sleep, so decoding never reallocates and the memory the
rollout engine holds is a single, predictable block. Active rows always occupy the
prefix [0, n): dropping finished rows is a gather of that prefix (`compact`), which
keeps every per-step op working on contiguous leading slices.
"""
from __future__ import annotations

import torch


class KVCache:
    """Per-layer K/V views over one preallocated block, plus the key-validity mask for prompt padding."""

    def __init__(
        self,
        *,
        num_layers: int,
        max_batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        kernel_layout: bool = False,
    ) -> None:
        """kernel_layout: how each (row, head)'s max_len * head_dim keys and values are ordered is up to the
        C++ kernels (keys dim-major, bf16 pairs interleaved, ...), so only they read the cache and
        compaction moves whole rows; otherwise rows are [max_len, head_dim] for the torch ops."""
        self.shape = (num_layers, 2, max_batch, kv_heads, max_len, head_dim)
        self.kernel_layout = kernel_layout
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.max_len = max_len
        self._kv: torch.Tensor | None = None
        self._key_valid: torch.Tensor | None = None
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []

    @property
    def allocated(self) -> bool:
        return self._kv is not None

    @property
    def nbytes(self) -> int:
        """Bytes the cache occupies when allocated."""
        numel = 1
        for s in self.shape:
            numel *= s
        return numel * torch.empty((), dtype=self.dtype).element_size()

    def allocate(self) -> None:
        """Allocate the block if it is not there yet (idempotent)."""
        if self._kv is None:
            self._kv = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            self._key_valid = torch.ones(self.max_batch, self.max_len, dtype=torch.bool, device=self.device)
            self._keys = list(self._kv[:, 0].unbind(0))
            self._values = list(self._kv[:, 1].unbind(0))

    def zero_(self) -> None:
        """Zero the block. Continuous batching attends over slots some rows never wrote (masked, weight 0), and
        0 x NaN from uninitialised memory would still be NaN; one-call decoding never reads an unwritten slot."""
        self._block().zero_()

    def free(self) -> None:
        """Drop the block (idempotent); the caller empties the device allocator cache if it wants the memory back."""
        self._kv = None
        self._key_valid = None
        self._keys, self._values = [], []

    def _block(self) -> torch.Tensor:
        if self._kv is None:
            raise RuntimeError("builtin rollout: KV cache is not allocated (engine asleep?)")
        return self._kv

    @property
    def keys(self) -> list[torch.Tensor]:
        """Per layer [max_batch, kv_heads, max_len, head_dim] key views (built once per allocation)."""
        self._block()
        return self._keys

    @property
    def values(self) -> list[torch.Tensor]:
        """Per layer [max_batch, kv_heads, max_len, head_dim] value views."""
        self._block()
        return self._values

    @property
    def key_valid(self) -> torch.Tensor:
        """[max_batch, max_len] bool: False on prompt padding slots; everything else is valid once written."""
        self._block()
        assert self._key_valid is not None
        return self._key_valid

    def reset_key_valid(self, prompt_valid: torch.Tensor) -> None:
        """Rows [0, n) get the prompt mask on slots [0, P) and True after."""
        self.set_key_valid(0, prompt_valid)

    def gather_rows(self, index: torch.Tensor, length: int, first_row: int = 0) -> None:
        """Rows [first_row, first_row + len(index)) become old rows `index` over slots [0, length) (compaction and
        n-sample fan-out; first_row > 0 fans out prompts that join a running batch)."""
        kv = self._block()
        rows = slice(first_row, first_row + index.shape[0])
        if self.kernel_layout:  # a slot prefix need not be a prefix of the memory: move whole rows
            kv[:, :, rows] = kv.index_select(2, index)
        else:
            kv[:, :, rows, :, :length] = kv[:, :, :, :, :length].index_select(2, index)
        self.key_valid[rows, :length] = self.key_valid[:, :length].index_select(0, index)

    def set_key_valid(self, first_row: int, prompt_valid: torch.Tensor) -> None:
        """Rows [first_row, first_row + n) get the prompt mask on slots [0, P) and True after."""
        n, p = prompt_valid.shape
        self.key_valid[first_row : first_row + n, :p] = prompt_valid
        self.key_valid[first_row : first_row + n, p:] = True
