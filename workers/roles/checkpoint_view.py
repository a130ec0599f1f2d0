"""What one rank sees of a checkpoint directory once every rank has written its part.

The driver compares each rank's view with its own before it finalises the checkpoint: a shard that
a rank on another machine wrote where the driver cannot see it (storage that is not shared) is
found at save time, not at the resume that needs it.
"""
from __future__ import annotations

import os

import torch.distributed as dist


def checkpoint_view(directory: str) -> dict[str, int]:
    """Relative path -> size of every file under `directory`, after all ranks have finished writing."""
    if dist.is_initialized():
        dist.barrier()
    view = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            view[os.path.relpath(path, directory)] = os.path.getsize(path)
    return view
