"""Offload/reload of params, grads and AdamW state: bit-exact round trips, FSDP2 bookkeeping intact.

On a CPU device the hybrid engine's offloader moves nothing (the state already is host
memory); the storage-release mechanism it uses on CUDA is exercised here on CPU for real
(`release_storage=True`): storages are freed, refilled, and training continues exactly
like an untouched twin.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybrid_engine.fsdp import local_tensor
from hybrid_engine.offload import (
    OffloadedStateError,
    TrainingStateOffloader,
    grad_tensors,
    optimizer_state_tensors,
    param_tensors,
)
from hybrid_engine.storage_stash import HostBufferPool, StorageStash

CPU = torch.device("cpu")


from fsdp_harness import finish_rank, fsdp2 as _fsdp2, init_gloo as _init, shutdown_gloo, tiny_qwen2 as _tiny_qwen2


# -- the distributed check ---------------------------------------------------------------------


def _loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    opt.zero_grad()
    loss = _loss(model, ids)
    loss.backward()
    opt.step()
    return loss.item()


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.clone() for t in param_tensors(model) + grad_tensors(model) + optimizer_state_tensors(opt)]


def _unique_storage_bytes(tensors: list[torch.Tensor]) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def _offload_worker(rank: int, world: int, init_file: str) -> None:
    _init(rank, world, init_file)
    try:
        a, b = _fsdp2(_tiny_qwen2(tie=False, seed=0)), _fsdp2(_tiny_qwen2(tie=False, seed=0))
        opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
        opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(rank)
        ids = [torch.randint(0, 50, (2, 12), generator=gen) for _ in range(3)]
        for model, opt in ((a, opt_a), (b, opt_b)):
            _train_step(model, opt, ids[0])  # AdamW state now exists
            _loss(model, ids[1]).backward()  # and so do gradients
            with torch.no_grad():
                model(input_ids=ids[1])  # leaves the FSDP2 root unsharded: offload must reshard

        # The engine's offloader on a CPU device moves nothing, and says so.
        cpu_off = TrainingStateOffloader.for_device(a, opt_a, CPU)
        for report in (cpu_off.offload_optimizer(), cpu_off.offload_params(), cpu_off.reload_params()):
            assert report.bytes_moved == 0 and report.storages == 0 and "CPU" in report.note

        # The storage-release mechanism, for real: free every storage, then refill.
        before = _state(a, opt_a)
        expected_optim = _unique_storage_bytes(grad_tensors(a) + optimizer_state_tensors(opt_a))
        expected_params = _unique_storage_bytes(param_tensors(a))
        off = TrainingStateOffloader(a, opt_a, device=CPU, release_storage=True, pin_memory=False)
        r_opt, r_par = off.offload_optimizer(), off.offload_params()
        assert (r_opt.bytes_moved, r_par.bytes_moved) == (expected_optim, expected_params)
        assert r_par.storages == len(list(a.parameters()))  # one padded shard per FSDP2 param
        assert off.offload_params().bytes_moved == 0  # idempotent
        freed = [p.to_local() for p in a.parameters()] + [p.grad.to_local() for p in a.parameters()]
        freed += [v.to_local() for s in opt_a.state.values() for v in s.values() if v.dim() > 0]
        assert all(t.untyped_storage().nbytes() == 0 for t in freed), "storages must really be freed"
        with pytest.raises(OffloadedStateError):
            a(input_ids=ids[2])
        with pytest.raises(OffloadedStateError):
            opt_a.step()

        r_back = [off.reload_params(), off.reload_optimizer()]
        assert sum(r.bytes_moved for r in r_back) == expected_optim + expected_params
        after = _state(a, opt_a)
        assert len(before) == len(after)
        assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(before, after)), "not bit-exact"

        # Second round trip reuses the pooled host buffers (no new host allocation).
        off.offload_optimizer()
        off.offload_params()
        assert off.pool.idle_bytes == 0
        off.reload_params()
        off.reload_optimizer()
        assert off.pool.idle_bytes == expected_optim + expected_params

        # FSDP2 bookkeeping intact: the next steps match the twin that never offloaded, bit for bit.
        for i in (1, 2):
            assert _train_step(a, opt_a, ids[i]) == _train_step(b, opt_b, ids[i])
        with torch.no_grad():
            for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
                assert torch.equal(pa.full_tensor(), pb.full_tensor()), name
    finally:
        shutdown_gloo()
    finish_rank()  # only reached when every check passed


@pytest.mark.timeout(180)
def test_fsdp2_offload_round_trip_two_ranks(tmp_path) -> None:
    mp.spawn(_offload_worker, args=(2, str(tmp_path / "pg_init")), nprocs=2, join=True)


# -- single-process checks of the stash -----------------------------------------------------------


def test_stash_moves_shared_storage_once_and_restores_views() -> None:
    base = torch.randn(8, 4)
    view, other = base[2:4].t(), torch.arange(6, dtype=torch.int64)
    expected = [base.clone(), view.clone(), other.clone()]
    stash = StorageStash(HostBufferPool(pin_memory=False))
    moved, storages = stash.stash([base, view, other, torch.empty(0)])
    assert (moved, storages) == (8 * 4 * 4 + 6 * 8, 2)
    assert base.untyped_storage().nbytes() == 0 and other.untyped_storage().nbytes() == 0
    with pytest.raises(RuntimeError, match="already holding"):
        stash.stash([base])
    assert stash.restore() == (moved, 2)
    assert all(torch.equal(x, y) for x, y in zip(expected, [base, view, other]))
    assert not stash.is_stashed


def test_stash_refuses_non_resizable_storage() -> None:
    foreign = torch.from_numpy(np.zeros(4, dtype=np.float32))
    with pytest.raises(TypeError, match="non-resizable"):
        StorageStash(HostBufferPool(pin_memory=False)).stash([foreign])


def test_offloader_without_optimizer_state_reports_and_installs_no_guard() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    off = TrainingStateOffloader(model, opt, device=CPU, release_storage=True, pin_memory=False)
    report = off.offload_optimizer()  # no step yet, no grads: nothing to move
    assert report.bytes_moved == 0 and "no optimizer tensors" in report.note
    model(torch.ones(1, 3)).sum().backward()  # not guarded: nothing was offloaded
    assert off.reload_optimizer().bytes_moved == 0
    assert [local_tensor(p).shape for p in model.parameters()] == [torch.Size([2, 3]), torch.Size([2])]
