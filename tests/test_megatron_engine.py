"""Megatron-core engine on CPU (gloo): conversion, TP=2 and PP=2 against HF and against FSDP2.

Two real processes per layout. The references are an unsharded HF forward (log-probs, entropy)
and a one-rank FSDP2 engine taking the same optimizer step on the same rows (weights after it).
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fsdp_harness import finish_rank, shutdown_gloo
from test_fsdp2_engine import engine_spec, hf_reference, make_batch, make_tiny_qwen2, optim_spec
from workers.engines.megatron.convert import DecoderShape, hf_to_megatron, megatron_to_hf, shard, split_kind, unshard
from workers.engines.megatron.model import decoder_shape, stage_layers
from workers.losses.sft import sft_loss

pytest.importorskip("megatron.core", reason="megatron-core is installed by `make install`")
pytestmark = pytest.mark.timeout(300)

CPU = torch.device("cpu")
TEMPERATURE = 0.7
# Adam's first step moves a weight by ~lr whatever its gradient's size, so a 1e-9 gradient difference at a
# near-zero gradient shows up at the scale of lr: 1e-3 keeps a real step while that stays under 1e-5.
STEP_LR = 1e-3


def _model(path: Path, arch: str, tied: bool) -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(3)
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    cfg = config_cls(vocab_size=51, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    model = model_cls(cfg)
    model.save_pretrained(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("qwen2", False), ("llama", False)])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_hf_to_megatron_to_hf_is_bit_exact(tmp_path, arch, tied, tp, pp):
    hf = _model(tmp_path, arch, tied)
    shape = decoder_shape(json.loads((tmp_path / "config.json").read_text()))
    assert shape.qkv_bias == (arch == "qwen2") and shape.padded_vocab(tp) % tp == 0
    back: dict[str, torch.Tensor] = {}
    for stage in range(pp):
        layers = stage_layers(shape.num_layers, pp, stage)
        first, last = stage == 0, stage == pp - 1
        full = hf_to_megatron(hf, shape, layers, first=first, last=last, tp=tp)
        pieces = {n: [shard(t, split_kind(n), r, tp) for r in range(tp)] for n, t in full.items()}
        assert all(p.shape[0] * (tp if split_kind(n) in ("rows", "fc1") else 1) == full[n].shape[0]
                   for n, ps in pieces.items() for p in ps)
        rebuilt = {n: unshard(ps, split_kind(n)) for n, ps in pieces.items()}
        back.update(megatron_to_hf(rebuilt, shape, layers, first=first, last=last))
    expected = {k: v for k, v in hf.items() if not (tied and k == "lm_head.weight")}
    assert back.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(back[name], tensor), name


def test_qkv_rows_are_grouped_by_kv_head():
    shape = DecoderShape(num_layers=1, hidden_size=8, num_heads=4, num_kv_heads=2, head_dim=2, intermediate_size=4,
                         vocab_size=10, tied=True, qkv_bias=True)
    q, k, v = torch.arange(8.0), 100 + torch.arange(4.0), 200 + torch.arange(4.0)
    from workers.engines.megatron.convert import fuse_qkv

    fused = fuse_qkv(q, k, v, shape)
    # group 0: q heads 0,1 (rows 0-3), k head 0, v head 0; then group 1
    assert fused.tolist() == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]


@pytest.mark.parametrize("seq_multiple", [1, 4])
def test_align_cut_to_the_longest_row_keeps_every_real_token_and_prediction(seq_multiple):
    """Cutting aligned rows to the longest real row (padding removal) drops only padding: the same tokens
    in every kept column, the same column predicting each real response token; never below a real row."""
    from workers.engines.megatron.batching import align
    from workers.engines.micro_batches import row_lengths

    batch = make_batch().slice(1)  # the longest row left out, so the cut is shorter than the padded width
    full = align(batch, pad_token_id=0, seq_multiple=1)
    longest = int(row_lengths(batch["attention_mask"]).max())
    assert longest < full.tokens.shape[1]
    cut = align(batch, pad_token_id=0, seq_multiple=seq_multiple, width=longest)
    width = -(-longest // seq_multiple) * seq_multiple
    assert cut.tokens.shape == (len(batch), width) and cut.causal_mask.shape[-1] == width
    kept = min(width, full.tokens.shape[1])
    assert torch.equal(cut.tokens[:, :kept], full.tokens[:, :kept])
    mask = batch["response_mask"].bool()
    assert torch.equal(cut.response_positions[mask], full.response_positions[mask])
    assert int(cut.response_positions.max()) < width  # masked slots read a column that exists
    with pytest.raises(ValueError, match="cuts real tokens"):
        align(batch, pad_token_id=0, seq_multiple=1, width=longest - 1)


# --- spawned checks ------------------------------------------------------------------------------


def _megatron(path: str, tp: int, pp: int, trained: bool = True, remove_padding: bool = True):
    """tp < 0 means |tp| with sequence parallelism."""
    from workers.engines.megatron.engine import MegatronEngine
    from workers.engines.megatron.spec import MegatronEngineSpec

    spec = MegatronEngineSpec(model_path=path, model_kind="causal_lm", compute_dtype="float32",
                              tensor_model_parallel_size=abs(tp), pipeline_model_parallel_size=pp,
                              sequence_parallel=tp < 0, remove_padding=remove_padding)
    return MegatronEngine(spec, optim_spec(lr=STEP_LR) if trained else None, device=CPU)


def _exported(engine) -> dict[str, torch.Tensor]:
    return {n: t.clone() for bucket in engine.export_weights(dtype=torch.float32, bucket_bytes=1 << 16, consumer=True)
            for n, t in bucket}


def check_layout(rank: int, path: str, tmp: str, tp: int, pp: int) -> None:
    """Log-probs vs HF; export before training is the HF checkpoint; one step equals FSDP2's; checkpoint resumes.

    The engine removes padding (the default). The training rows leave out the longest row, so even the
    pipeline (cut to the batch's longest row) runs shorter than the padded width; a padded engine on the
    same rows gives the same log-probs."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from workers.engines.fsdp2 import FSDPEngine

    batch = make_batch()
    engine = _megatron(path, tp, pp)
    short = batch.slice(1, len(batch))
    assert int(short["attention_mask"].sum(dim=1).max()) < short["input_ids"].shape[1]
    padded = _megatron(path, tp, pp, trained=False, remove_padding=False)
    cut_lp = engine.compute_log_probs(short, temperature=TEMPERATURE, micro_batch_size=3, with_entropy=True)
    full_lp = padded.compute_log_probs(short, temperature=TEMPERATURE, micro_batch_size=3, with_entropy=True)
    short_mask = short["response_mask"].bool()
    for key in ("log_probs", "entropy"):
        assert (cut_lp[key] - full_lp[key])[short_mask].abs().max() <= 1e-5, key
    del padded
    assert engine.mesh.collect == (rank == (0 if pp == 1 else 1))
    out = engine.compute_log_probs(batch, temperature=TEMPERATURE, micro_batch_size=3, with_entropy=True)
    mask = batch["response_mask"].bool()
    if engine.mesh.collect:
        ref_lp, ref_ent = hf_reference(path, batch, TEMPERATURE)
        assert (out["log_probs"] - ref_lp)[mask].abs().max() <= 1e-5
        assert (out["entropy"] - ref_ent)[mask].abs().max() <= 1e-5
    initial = load_file(os.path.join(path, "model.safetensors"))
    exported = _exported(engine)
    assert exported.keys() == initial.keys() - {"lm_head.weight"}
    assert all(torch.equal(exported[k], initial[k]) for k in exported)

    metrics = engine.train_mini_batch(short, sft_loss, micro_batch_size=4, temperature=1.0, with_entropy=False)
    after = _exported(engine)
    solo = dist.new_group([0])
    if rank == 0:
        fsdp = FSDPEngine(engine_spec(path, "causal_lm"), optim_spec(lr=STEP_LR), device=CPU, dp_group=solo)
        ref = fsdp.train_mini_batch(short, sft_loss, micro_batch_size=8, temperature=1.0, with_entropy=False)
        assert abs(ref["grad_norm"] - metrics["grad_norm"]) <= 1e-5 * max(1.0, ref["grad_norm"])
        fsdp_weights = {n: p.full_tensor().detach() for n, p in fsdp.module.named_parameters()}
        for name, tensor in after.items():
            torch.testing.assert_close(tensor, fsdp_weights[name], atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    dist.barrier()

    ckpt = os.path.join(tmp, f"ckpt-tp{tp}-pp{pp}")
    engine.save_checkpoint(ckpt)
    resumed = _megatron(path, tp, pp)
    resumed.load_checkpoint(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(_exported(resumed).values(), after.values()))
    m1 = engine.train_mini_batch(batch, sft_loss, micro_batch_size=4, temperature=1.0, with_entropy=False)
    m2 = resumed.train_mini_batch(batch, sft_loss, micro_batch_size=4, temperature=1.0, with_entropy=False)
    assert m1["grad_norm"] == m2["grad_norm"] and m1["param_norm"] == m2["param_norm"]
    if rank == 0:
        hf = AutoModelForCausalLM.from_pretrained(ckpt)
        state = hf.state_dict()
        assert all(torch.equal(state[k], after[k]) for k in after)
    check_offload_round_trip(engine)
    # peers of one data-parallel group handed different rows (a plain DP split) is an error, not nonsense
    with pytest.raises(RuntimeError, match="received different rows"):
        engine.compute_log_probs(batch.chunk(2)[rank], temperature=1.0, micro_batch_size=4, with_entropy=False)


def check_offload_round_trip(engine) -> None:
    """The hybrid engine's offload of params, grads, optimizer state (and fp32 masters) frees them and reloads
    them bit-exact (release_storage=True exercises the real freeing on CPU, as the FSDP2 offload tests do)."""
    from hybrid_engine.offload import TrainingStateOffloader

    def snapshot() -> list[torch.Tensor]:
        state = [t for s in engine.optimizer.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return [t.detach().clone() for t in [*engine.module.parameters(), *engine.optimizer.master, *state]]

    before = snapshot()
    offloader = TrainingStateOffloader(engine.module, engine.optimizer.optimizer, device=CPU, release_storage=True,
                                       pin_memory=False)
    moved = offloader.offload_params().bytes_moved + offloader.offload_optimizer().bytes_moved
    assert moved > 0 and all(p.untyped_storage().size() == 0 for p in engine.module.parameters())
    offloader.reload_params()
    offloader.reload_optimizer()
    assert all(torch.equal(a, b) for a, b in zip(snapshot(), before))


def _entry(rank: int, fn_name: str, path: str, tmp: str, port: int, tp: int, pp: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
    try:
        globals()[fn_name](rank, path, tmp, tp, pp)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        shutdown_gloo()
    finish_rank()  # only reached when every check passed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (-2, 1)], ids=["tp2", "pp2", "tp2-sequence-parallel"])
def test_megatron_layout_matches_hf_and_fsdp2(tmp_path, tp, pp):
    path = str(tmp_path / "tiny-qwen2")
    make_tiny_qwen2(path)
    mp.spawn(_entry, args=("check_layout", path, str(tmp_path), _free_port(), tp, pp), nprocs=2, join=True)


def check_gpu_bf16(rank: int, path: str, tmp: str, tp: int, pp: int) -> None:
    """One GPU: bf16 compute with fp32 master weights; log-probs near the fp32 HF ones, a finite step that moves them."""
    from workers.engines.megatron.engine import MegatronEngine
    from workers.engines.megatron.spec import MegatronEngineSpec

    spec = MegatronEngineSpec(model_path=path, model_kind="causal_lm", compute_dtype="bfloat16",
                              tensor_model_parallel_size=1, pipeline_model_parallel_size=1, sequence_parallel=False,
                              remove_padding=True)
    engine = MegatronEngine(spec, optim_spec(lr=STEP_LR), device=torch.device("cuda", 0))
    assert all(m.dtype == torch.float32 for m in engine.optimizer.master)
    batch = make_batch()
    mask = batch["response_mask"].bool()
    ref_lp, _ = hf_reference(path, batch, TEMPERATURE)
    before = engine.compute_log_probs(batch, temperature=TEMPERATURE, micro_batch_size=4, with_entropy=True)
    assert (before["log_probs"] - ref_lp)[mask].abs().max() < 0.1
    metrics = engine.train_mini_batch(batch, sft_loss, micro_batch_size=4, temperature=1.0, with_entropy=False)
    assert metrics["step_skipped"] == 0.0 and 0 < metrics["grad_norm"] < float("inf")
    after = engine.compute_log_probs(batch, temperature=TEMPERATURE, micro_batch_size=4, with_entropy=False)
    assert (after["log_probs"] - before["log_probs"])[mask].abs().max() > 0


def _gpu_entry(rank: int, path: str, tmp: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1, timeout=datetime.timedelta(seconds=120))
    try:
        check_gpu_bf16(rank, path, tmp, 1, 1)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_megatron_bf16_forward_backward_on_one_gpu(tmp_path):
    path = str(tmp_path / "tiny-qwen2")
    make_tiny_qwen2(path)
    mp.spawn(_gpu_entry, args=(path, str(tmp_path), _free_port()), nprocs=1, join=True)
