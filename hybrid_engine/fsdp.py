"""The two FSDP2/DTensor facts the hybrid engine relies on, in one place.

1. After a forward without backward, FSDP2 leaves the root module's parameters
   unsharded (it skips the root's post-forward reshard because backward would gather
   them again). Offloading or streaming must first `reshard()` every FSDP module so that
   the registered parameters are the sharded DTensors and the full copies are freed.
2. A DTensor's memory is its `_local_tensor` (`to_local()`); for FSDP2 parameters that
   tensor is a view into the padded flat shard the all-gathers read, so both share one
   storage.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor


def reshard_fsdp_modules(module: nn.Module) -> int:
    """Reshard every FSDP2 module under (and including) `module`; return how many there were."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()
            count += 1
    return count


def fsdp_modules(module: nn.Module) -> list[nn.Module]:
    """`module` and every FSDP2 module below it (their forwards each trigger an all-gather)."""
    found = [sub for sub in module.modules() if isinstance(sub, FSDPModule)]
    return found if module in found else [module, *found]


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor that owns this rank's memory: the local shard of a DTensor, else the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two (local) tensors are backed by the same non-empty storage."""
    pa, pb = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
    return pa != 0 and pa == pb
