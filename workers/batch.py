"""The Batch protocol: the one type the driver and the workers exchange.

A Batch is B rows. Per-row tensors live in a TensorDict with batch_size [B] so that
row operations (index, slice, cat) apply to every tensor at once; per-row Python
objects (uids, raw text, ground truth) live in numpy object arrays of length B so they
index exactly like the tensors; `meta` holds batch-level values (stats, flags) and is
never split or indexed.

Every operation returns a new Batch unless its docstring says otherwise (only
`__setitem__` and `pop` mutate). New batches share storage with their source where
the underlying op does (select, slice); treat rows as read-only once handed on.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

Indices = torch.Tensor | np.ndarray | Sequence[int]


def _object_array(key: str, values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Build a 1-D object array element by element, so lists of lists stay one row each."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"non-tensor {key!r} must be a sequence of per-row values, got {type(values).__name__}")
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return values.astype(object, copy=False)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _row_count(key: str, tensor: Any) -> int:
    """Rows in a per-row tensor; scalars are refused because they belong in meta."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor {key!r} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError(f"tensor {key!r} is a scalar; per-row tensors need a leading batch dim (put scalars in meta)")
    return tensor.shape[0]


def _values_equal(a: Any, b: Any) -> bool:
    """Equality that works for tensors, arrays (object arrays row by row) and plain values."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape:
            return False
        if a.dtype == object or b.dtype == object:
            return all(_values_equal(x, y) for x, y in zip(a.flat, b.flat))
        return bool(np.array_equal(a, b))
    return bool(a == b)


def _as_index(indices: Indices) -> torch.Tensor:
    """Row indices as a 1-D CPU tensor (int64 or bool); floats are refused rather than truncated."""
    idx = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
    if idx.numel() == 0 and idx.dtype != torch.bool:
        return torch.zeros(0, dtype=torch.long)  # np.asarray([]) is float64
    if idx.dtype != torch.bool and (idx.is_floating_point() or idx.is_complex()):
        raise TypeError(f"row indices must be integers or a boolean mask, got dtype {idx.dtype}")
    if idx.dim() != 1:
        raise ValueError(f"row indices must be 1-D, got shape {tuple(idx.shape)}")
    return idx.cpu() if idx.dtype == torch.bool else idx.cpu().long()


def _merge_checked(kind: str, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two mappings; a shared key must hold equal values on both sides."""
    merged = dict(ours)
    for key, value in theirs.items():
        if key in merged and not _values_equal(merged[key], value):
            raise ValueError(f"union: {kind} {key!r} is present in both batches with different values")
        merged[key] = value
    return merged


class Batch:
    """B rows of tensors and Python objects, plus batch-level meta.

    Build with `Batch.from_dict`; the constructor trusts its TensorDict and only
    checks the non-tensor lengths against it.
    """

    def __init__(self, tensors: TensorDictBase, non_tensors: dict[str, np.ndarray], meta: dict[str, Any]):
        if len(tensors.batch_size) != 1:
            raise ValueError(f"tensors must have a 1-D batch_size [B], got {list(tensors.batch_size)}")
        self.tensors = tensors
        self.non_tensors = non_tensors
        self.meta = meta
        for key, values in non_tensors.items():
            self._check_rows("non-tensor", key, len(values))
        overlap = set(tensors.keys()) & set(non_tensors)
        if overlap:
            raise ValueError(f"keys {sorted(overlap)} are both tensor and non-tensor fields")

    @classmethod
    def from_dict(
        cls,
        tensors: Mapping[str, torch.Tensor] | None = None,
        non_tensors: Mapping[str, Sequence[Any]] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Batch:
        """Validate that every field has the same number of rows and build the Batch.

        B is taken from the first field (tensors first); a batch with no fields has B=0.
        """
        tensors = dict(tensors or {})
        arrays = {k: _object_array(k, v) for k, v in (non_tensors or {}).items()}
        lengths: dict[str, int] = {}
        for key, tensor in tensors.items():
            lengths[key] = _row_count(key, tensor)
        lengths.update({k: len(v) for k, v in arrays.items() if k not in lengths})
        first = next(iter(lengths), None)
        size = lengths[first] if first is not None else 0
        for key, length in lengths.items():
            if length != size:
                raise ValueError(f"field {key!r} has length {length}, expected {size} (the length of {first!r})")
        return cls(TensorDict(tensors, batch_size=[size]), arrays, dict(meta or {}))

    def _check_rows(self, kind: str, key: str, length: int) -> None:
        if length != len(self):
            raise ValueError(f"{kind} {key!r} has length {length}, expected {len(self)} (the batch size)")

    def _with_rows(self, tensors: TensorDictBase, non_tensors: dict[str, np.ndarray]) -> Batch:
        """A Batch over new rows that keeps this batch's meta (shallow-copied)."""
        return Batch(tensors, non_tensors, dict(self.meta))

    # --- mapping-like access -------------------------------------------------

    def __len__(self) -> int:
        return int(self.tensors.batch_size[0])

    def __contains__(self, key: str) -> bool:
        return key in self.tensors.keys() or key in self.non_tensors

    def keys(self) -> list[str]:
        """Tensor keys, then non-tensor keys (meta keys are not row fields)."""
        return list(self.tensors.keys()) + list(self.non_tensors)

    def __getitem__(self, key: str) -> torch.Tensor | np.ndarray:
        if key in self.tensors.keys():
            return self.tensors[key]
        if key in self.non_tensors:
            return self.non_tensors[key]
        raise KeyError(f"{key!r} is not a field of this batch; fields: {self.keys()}")

    def __setitem__(self, key: str, value: torch.Tensor | Sequence[Any]) -> None:
        """Set a field in place: tensors go to `tensors`, anything else to `non_tensors`.

        A key switches kind if it is set with the other kind of value.
        """
        if isinstance(value, torch.Tensor):
            self._check_rows("tensor", key, _row_count(key, value))
            self.non_tensors.pop(key, None)
            self.tensors[key] = value
        else:
            array = _object_array(key, value)
            self._check_rows("non-tensor", key, len(array))
            if key in self.tensors.keys():
                del self.tensors[key]
            self.non_tensors[key] = array

    # --- field selection -----------------------------------------------------

    def select(
        self,
        tensor_keys: Iterable[str] | None = None,
        non_tensor_keys: Iterable[str] | None = None,
        meta_keys: Iterable[str] | None = None,
    ) -> Batch:
        """A Batch with only the named fields (None keeps every field of that kind); shares storage."""
        tensor_keys = list(self.tensors.keys()) if tensor_keys is None else list(tensor_keys)
        non_tensor_keys = list(self.non_tensors) if non_tensor_keys is None else list(non_tensor_keys)
        meta_keys = list(self.meta) if meta_keys is None else list(meta_keys)
        _require(tensor_keys, self.tensors.keys(), "tensor")
        _require(non_tensor_keys, self.non_tensors, "non-tensor")
        _require(meta_keys, self.meta, "meta")
        return Batch(
            self.tensors.select(*tensor_keys),
            {k: self.non_tensors[k] for k in non_tensor_keys},
            {k: self.meta[k] for k in meta_keys},
        )

    def pop(
        self,
        tensor_keys: Iterable[str] = (),
        non_tensor_keys: Iterable[str] = (),
        meta_keys: Iterable[str] = (),
    ) -> Batch:
        """Remove the named fields from this batch (in place) and return them as a new Batch."""
        popped = self.select(tensor_keys, non_tensor_keys, meta_keys)
        for key in popped.tensors.keys():
            del self.tensors[key]
        for key in popped.non_tensors:
            del self.non_tensors[key]
        for key in popped.meta:
            del self.meta[key]
        return popped

    def union(self, other: Batch) -> Batch:
        """A Batch with the fields of both; a key in both must hold equal values."""
        if len(self) != len(other):
            raise ValueError(f"union: batch sizes differ ({len(self)} vs {len(other)})")
        for key in set(self.tensors.keys()) & set(other.non_tensors):
            raise ValueError(f"union: {key!r} is a tensor here but a non-tensor in the other batch")
        for key in set(self.non_tensors) & set(other.tensors.keys()):
            raise ValueError(f"union: {key!r} is a non-tensor here but a tensor in the other batch")
        tensors = _merge_checked("tensor", dict(self.tensors.items()), dict(other.tensors.items()))
        return Batch(
            TensorDict(tensors, batch_size=[len(self)]),
            _merge_checked("non-tensor", self.non_tensors, other.non_tensors),
            _merge_checked("meta", self.meta, other.meta),
        )

    # --- row operations ------------------------------------------------------

    def index(self, indices: Indices) -> Batch:
        """The rows at `indices` (ints, repeats allowed, or a boolean mask of length B)."""
        idx = _as_index(indices)
        if idx.dtype == torch.bool:
            self._check_rows("boolean mask", "indices", idx.numel())
            idx = idx.nonzero().flatten()
        if idx.numel() and (int(idx.max()) >= len(self) or int(idx.min()) < -len(self)):
            raise IndexError(f"index out of range for a batch of {len(self)} rows")
        rows = idx.numpy()
        return self._with_rows(self.tensors[idx], {k: v[rows] for k, v in self.non_tensors.items()})

    def slice(self, start: int, end: int | None = None) -> Batch:
        """Rows [start, end) with Python slice semantics; shares storage."""
        s = slice(start, end)
        return self._with_rows(self.tensors[s], {k: v[s] for k, v in self.non_tensors.items()})

    def reorder(self, indices: Indices) -> Batch:
        """A new Batch whose row i is this batch's row indices[i]; indices must be a permutation.

        Returns a new batch rather than reordering in place, so a batch already handed to
        another caller never changes under it. Use `index` for selections that are not permutations.
        """
        idx = _as_index(indices)
        if idx.dtype == torch.bool or not torch.equal(torch.sort(idx).values, torch.arange(len(self))):
            raise ValueError(f"reorder: indices must be a permutation of range({len(self)})")
        return self.index(idx)

    def repeat(self, times: int, interleave: bool = True) -> Batch:
        """Each row `times` times: interleaved [a, a, b, b] or tiled [a, b, a, b]."""
        if times < 1:
            raise ValueError(f"repeat: times must be >= 1, got {times}")
        rows = torch.arange(len(self))
        return self.index(rows.repeat_interleave(times) if interleave else rows.repeat(times))

    def chunk(self, n: int) -> list[Batch]:
        """Split into n equal parts (e.g. one per data-parallel rank); B must divide by n."""
        if n < 1:
            raise ValueError(f"chunk: n must be >= 1, got {n}")
        if len(self) % n:
            raise ValueError(
                f"chunk: batch size {len(self)} is not divisible by {n}; call pad_to_divisor({n}) first"
            )
        size = len(self) // n
        return [self.slice(i * size, (i + 1) * size) for i in range(n)]

    def split_by_size(self, size: int) -> list[Batch]:
        """Consecutive micro-batches of `size` rows; the last may be shorter; [] for an empty batch."""
        if size < 1:
            raise ValueError(f"split_by_size: size must be >= 1, got {size}")
        return [self.slice(start, start + size) for start in range(0, len(self), size)]

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """Stack batches row-wise (inverse of chunk).

        Meta comes from the first batch, except values that know how to combine: a meta value
        whose type has `concat_meta(values)` (e.g. per-rank rollout statistics) is merged over
        every batch that carries that key.
        """
        if not batches:
            raise ValueError("concat: need at least one batch")
        first = batches[0]
        tensor_keys, non_tensor_keys = set(first.tensors.keys()), set(first.non_tensors)
        for i, batch in enumerate(batches[1:], start=1):
            if set(batch.tensors.keys()) != tensor_keys or set(batch.non_tensors) != non_tensor_keys:
                diff = sorted(set(batch.keys()) ^ set(first.keys()))
                raise ValueError(f"concat: batch {i} has different fields from batch 0; differing keys: {diff}")
        size = sum(len(b) for b in batches)
        tensors = {k: torch.cat([b.tensors[k] for b in batches]) for k in first.tensors.keys()}
        non_tensors = {k: np.concatenate([b.non_tensors[k] for b in batches]) for k in first.non_tensors}
        return Batch(TensorDict(tensors, batch_size=[size]), non_tensors, _concat_meta(batches))

    def pad_to_divisor(self, divisor: int) -> tuple[Batch, int]:
        """Append copies of rows from the start (wrapping) until len % divisor == 0.

        Returns (padded, pad_size); `padded.unpad(pad_size)` gives this batch back.
        """
        if divisor < 1:
            raise ValueError(f"pad_to_divisor: divisor must be >= 1, got {divisor}")
        pad_size = -len(self) % divisor
        if pad_size == 0:
            return self.select(), 0
        return Batch.concat([self, self.index(torch.arange(pad_size) % len(self))]), pad_size

    def unpad(self, pad_size: int) -> Batch:
        """Drop the last pad_size rows (the inverse of pad_to_divisor)."""
        if not 0 <= pad_size <= len(self):
            raise ValueError(f"unpad: pad_size must be in [0, {len(self)}], got {pad_size}")
        return self.slice(0, len(self) - pad_size)

    # --- transport -----------------------------------------------------------

    def to(self, device: torch.device | str) -> Batch:
        """A Batch with tensors on `device`; non-tensor arrays and meta values are shared, not copied."""
        return self._with_rows(self.tensors.to(device), dict(self.non_tensors))

    def __getstate__(self) -> dict[str, Any]:
        # Plain tensors pickle out-of-band through Ray; a TensorDict would not.
        return {
            "tensors": self.tensors.to_dict(),
            "batch_size": len(self),
            "device": None if self.tensors.device is None else str(self.tensors.device),
            "non_tensors": self.non_tensors,
            "meta": self.meta,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tensors = TensorDict(state["tensors"], batch_size=[state["batch_size"]], device=state["device"])
        self.non_tensors = state["non_tensors"]
        self.meta = state["meta"]

    def __repr__(self) -> str:
        tensors = ", ".join(
            f"{k}: {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in self.tensors.items()
        )
        return (
            f"Batch(len={len(self)}, tensors={{{tensors}}}, "
            f"non_tensors={list(self.non_tensors)}, meta={list(self.meta)})"
        )


def _require(keys: Iterable[str], present: Iterable[str], kind: str) -> None:
    """Raise a KeyError naming the first requested key that is missing."""
    present = set(present)
    for key in keys:
        if key not in present:
            raise KeyError(f"{kind} key {key!r} not in batch; available: {sorted(present)}")


def _concat_meta(batches: Sequence[Batch]) -> dict[str, Any]:
    meta = dict(batches[0].meta)
    for key, value in meta.items():
        merge = getattr(type(value), "concat_meta", None)
        if merge is not None:
            meta[key] = merge([b.meta[key] for b in batches if key in b.meta])
    return meta
