"""Two-rank FSDP2 harness shared by the hybrid-engine tests: a tiny Qwen2, sharding, gloo rendezvous."""
from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def tiny_qwen2(*, tie: bool, seed: int) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def fsdp2(model: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def init_gloo(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )


def shutdown_gloo() -> None:
    """Barrier, then destroy: a rank that tears its group down while the other still finishes a collective
    aborts the process ("terminate called without an active exception", ~1 run in 8 without the barrier)."""
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def finish_rank() -> None:
    """End a spawned rank whose checks all passed without the interpreter's teardown.

    Gloo's worker threads are torn down by C++ destructors at interpreter exit, and now and then that
    aborts a rank after everything passed ("terminate called without an active exception"), failing the
    test for nothing. os._exit(0) skips that teardown; a rank that failed raises before it gets here.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
