"""GPU-only checks of the hybrid engine: offload really frees device memory; split sync over NCCL.

Skipped without CUDA (the NCCL broadcast needs two GPUs: NCCL refuses two ranks on one device).
"""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fsdp_harness import fsdp2

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _model(seed: int) -> torch.nn.Module:
    """~15M parameters: large enough that allocator rounding is noise next to the state it frees."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=1000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def _offload_worker(rank: int, tmp: str) -> None:
    from hybrid_engine.fsdp import local_tensor
    from hybrid_engine.mode_switch import HybridEngine
    from hybrid_engine.training_state import ModuleState
    from hybrid_engine.offload import grad_tensors, optimizer_state_tensors, param_tensors

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp}/pg", rank=0, world_size=1,
                            timeout=timedelta(seconds=120))
    try:
        device = torch.device("cuda", 0)
        model = fsdp2(_model(seed=0).to(device))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(0, 1000, (4, 32), device=device)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()  # AdamW state exists; gradients are kept (not zeroed) so they are offloaded too
        state = [local_tensor(t) for t in param_tensors(model) + grad_tensors(model) + optimizer_state_tensors(opt)]
        state_bytes = _storage_bytes(state)
        snapshot = [t.detach().clone().cpu() for t in state]
        engine = HybridEngine(ModuleState(model, opt, device), None, device=device, bucket_bytes=1 << 22,
                              weight_dtype=torch.bfloat16,
                              offload_params=True, offload_optimizer=True, is_rollout_consumer=False)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        report = engine.rollout_mode()
        after = torch.cuda.memory_allocated(device)
        freed = before - after
        assert freed >= 0.9 * state_bytes, f"freed {freed} of {state_bytes} bytes of params+grads+optimizer"
        assert report.offload_bytes >= 0.9 * state_bytes
        engine.train_mode()
        restored = [local_tensor(t) for t in param_tensors(model) + grad_tensors(model) + optimizer_state_tensors(opt)]
        assert all(torch.equal(a.cpu(), b) for a, b in zip(restored, snapshot)), "reload is not bit-exact"
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()  # and training goes on
        opt.step()
        Path(tmp, "ok").write_text(f"{freed} {state_bytes}")
    finally:
        dist.destroy_process_group()


def test_offload_frees_at_least_90_percent_of_training_state(tmp_path) -> None:
    mp.spawn(_offload_worker, args=(str(tmp_path),), nprocs=1, join=True)
    assert (tmp_path / "ok").is_file()


def _nccl_worker(rank: int, tmp: str) -> None:
    from hybrid_engine.broadcast import receive_weights, send_weights
    from hybrid_engine.names import hf_name
    from hybrid_engine.sync_group import connect_sync_store, join_sync_group, open_sync_store
    from hybrid_engine.weight_stream import WeightStream

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    path = Path(tmp)
    model = _model(seed=0)
    with torch.no_grad():
        for p in model.parameters():  # weights no checkpoint has, made the same way on both ranks
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    expected = {hf_name(n): p.detach().to(torch.bfloat16) for n, p in model.named_parameters()}
    if rank == 0:
        store, port = open_sync_store("127.0.0.1", 60)
        (path / "port.tmp").write_text(str(port))
        (path / "port.tmp").rename(path / "port")  # appears whole or not at all
        group = join_sync_group(store, rank=0, world_size=2, device=device, timeout_s=60)
        stats = send_weights(group, WeightStream(model.to(device), bucket_bytes=1 << 16, dtype=torch.bfloat16,
                                                 consumer=True))
        assert stats.buckets > 1 and stats.tensors == len(expected)
        return
    deadline = time.monotonic() + 60
    while not (path / "port").is_file():
        assert time.monotonic() < deadline, "sender never published its port"
        time.sleep(0.05)
    store = connect_sync_store("127.0.0.1", int((path / "port").read_text()), 60)
    group = join_sync_group(store, rank=1, world_size=2, device=device, timeout_s=60)
    got = {name: t.cpu() for bucket in receive_weights(group) for name, t in bucket}
    assert list(got) == list(expected)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    (path / "ok").write_text("received")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL broadcast needs two GPUs")
def test_split_broadcast_over_nccl_is_exact(tmp_path) -> None:
    mp.spawn(_nccl_worker, args=(str(tmp_path),), nprocs=2, join=True)
    assert (tmp_path / "ok").is_file()
