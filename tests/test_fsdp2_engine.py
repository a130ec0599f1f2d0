"""FSDP2 engine: 2 real gloo processes against 1-rank FSDP and plain HF, on a tiny random Qwen2.

Process start-up dominates on a 2-core machine, so each spawned test bundles several checks.
"""
from __future__ import annotations

import datetime
import importlib
import math
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist

from fsdp_harness import finish_rank, shutdown_gloo
import torch.multiprocessing as mp

from workers.batch import Batch
from workers.engines import LossNorm
from workers.engines.fsdp2.optim import lr_ratio
from workers.engines.fsdp2.spec import FSDPEngineSpec, OptimSpec
from workers.losses.sft import sft_loss

P, R, VOCAB = 6, 5, 50
PROMPT_LENS = [6, 3, 4, 1, 5, 2, 6, 4]
RESPONSE_LENS = [5, 1, 3, 5, 2, 4, 1, 5]  # uneven on purpose: per-micro-batch means would differ


# --- fixtures built in the parent, used by the spawned ranks -------------------------------------


def make_tiny_qwen2(path: str) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(path)


def rollout_rows(prompt_lens: list[int], response_lens: list[int], pw: int, rw: int, seed: int,
                 extra: tuple[str, ...]) -> Batch:
    """Rows in the rollout layout (left-padded prompts | right-padded responses), ids never pad (0), plus
    random [n, rw] tensors named in `extra` (returns, advantages)."""
    g = torch.Generator().manual_seed(seed)
    n = len(prompt_lens)
    input_ids = torch.zeros(n, pw + rw, dtype=torch.long)
    attn = torch.zeros(n, pw + rw, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip(prompt_lens, response_lens)):
        input_ids[i, pw - pl : pw + rl] = torch.randint(3, VOCAB, (pl + rl,), generator=g)
        attn[i, pw - pl : pw + rl] = 1
    return Batch.from_dict({
        "input_ids": input_ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
        "responses": input_ids[:, pw:].clone(), "response_mask": attn[:, pw:].clone(),
        **{key: torch.randn(n, rw, generator=g) for key in extra},
    })


def family_rows(families: list[tuple[int, list[int]]], pw: int, rw: int, seed: int,
                extra: tuple[str, ...] = ()) -> Batch:
    """Rollout-layout rows in families: (prompt length, [response lengths]); a family's rows share one prompt."""
    g = torch.Generator().manual_seed(seed)
    n = sum(len(lens) for _, lens in families)
    input_ids = torch.zeros(n, pw + rw, dtype=torch.long)
    attn = torch.zeros(n, pw + rw, dtype=torch.long)
    i = 0
    for pl, lens in families:
        prompt = torch.randint(3, VOCAB, (pl,), generator=g)
        for rl in lens:
            input_ids[i, pw - pl:pw] = prompt
            input_ids[i, pw:pw + rl] = torch.randint(3, VOCAB, (rl,), generator=g)
            attn[i, pw - pl:pw + rl] = 1
            i += 1
    return Batch.from_dict({
        "input_ids": input_ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
        "responses": input_ids[:, pw:].clone(), "response_mask": attn[:, pw:].clone(),
        **{key: torch.randn(n, rw, generator=g) for key in extra},
    })


def make_batch() -> Batch:
    """8 rows: left-padded prompts, right-padded responses, token ids never equal to pad (0)."""
    return rollout_rows(PROMPT_LENS, RESPONSE_LENS, P, R, seed=1, extra=("returns",))


def engine_spec(path: str, kind: str, **over: object) -> FSDPEngineSpec:
    fields = dict(
        model_path=path, model_kind=kind, master_dtype="float32", param_dtype="float32", reduce_dtype="float32",
        reshard_after_forward=True, activation_checkpointing=False, cpu_offload=False, attn_implementation="sdpa",
        remove_padding=True, max_tokens_per_micro_batch=None, gather_once=False, seed=0,
    )
    fields.update(over)
    return FSDPEngineSpec(**fields)  # type: ignore[arg-type]


def optim_spec(**over: object) -> OptimSpec:
    fields = dict(
        lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, grad_clip=1.0, warmup_steps=3, total_steps=20,
        schedule="constant", min_lr_ratio=0.0,
    )
    fields.update(over)
    return OptimSpec(**fields)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, module: str, fn_name: str, path: str, tmp: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        getattr(importlib.import_module(module), fn_name)(rank, path, tmp)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        shutdown_gloo()
    finish_rank()  # only reached when every check passed


def run_2_ranks(fn_name: str, tmp_path, module: str = __name__) -> None:
    """Run `module.fn_name(rank, path, tmp)` on 2 gloo ranks over a fresh tiny Qwen2 checkpoint."""
    path = str(tmp_path / "tiny-qwen2")
    make_tiny_qwen2(path)
    mp.spawn(_entry, args=(module, fn_name, path, str(tmp_path), _free_port()), nprocs=2, join=True)


# --- helpers used inside the ranks ---------------------------------------------------------------

CPU = torch.device("cpu")


def my_rows(batch: Batch, rank: int) -> Batch:
    return batch.chunk(2)[rank]


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def full_params(engine) -> dict[str, torch.Tensor]:
    return {n: p.full_tensor().detach().clone() for n, p in engine.module.named_parameters()}


def capture_grads(engine) -> dict[str, torch.Tensor]:
    """The (clipped) gradients each optimizer step applies, kept from a step pre-hook: the engine frees them
    right after the step."""
    seen: dict[str, torch.Tensor] = {}

    def keep(optimizer, args, kwargs) -> None:
        seen.clear()
        seen.update({n: p.grad.full_tensor().clone() for n, p in engine.module.named_parameters()})

    engine.optimizer.register_step_pre_hook(keep)
    return seen


def assert_close_dicts(a: dict, b: dict, atol: float, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


def hf_reference(path: str, batch: Batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropy from an unsharded HF forward over all positions (no logits_to_keep)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
    logp = torch.log_softmax(logits[:, P - 1 : P + R - 1].float() / temperature, dim=-1)
    lp = logp.gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    return lp, -(logp.exp() * logp).sum(-1)


def value_loss_fn(outputs, mb, norm: LossNorm):
    mask = mb["response_mask"].float()
    err = (outputs["values"] - mb["returns"]) ** 2
    return (err * mask).sum() / norm.global_tokens, {"vmean": outputs["values"].mean()}


# --- spawned checks ------------------------------------------------------------------------------


def check_forwards(rank: int, path: str, tmp: str) -> None:
    """2-rank == 1-rank == HF for log-probs/entropy, values and scores; frozen engines; bf16 runs."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from workers.engines.fsdp2 import FSDPEngine

    batch, temp = make_batch(), 0.7
    solo = dist.new_group([0])
    frozen = FSDPEngine(engine_spec(path, "causal_lm"), None, device=CPU)
    assert frozen.optimizer is None and frozen.lr_scheduler is None
    assert not any(p.requires_grad for p in frozen.module.parameters())
    with pytest.raises(RuntimeError, match="frozen"):
        frozen.train_mini_batch(my_rows(batch, rank), sft_loss, micro_batch_size=2, temperature=1.0, with_entropy=False)
    out2 = frozen.compute_log_probs(my_rows(batch, rank), temperature=temp, micro_batch_size=3, with_entropy=True)
    lp2, ent2 = gather_rows(out2["log_probs"]), gather_rows(out2["entropy"])

    bf16 = FSDPEngine(engine_spec(path, "causal_lm", param_dtype="bfloat16"), None, device=CPU)
    lp_bf16 = gather_rows(bf16.compute_log_probs(my_rows(batch, rank), temperature=temp, micro_batch_size=4, with_entropy=False)["log_probs"])
    assert torch.isfinite(lp_bf16).all() and (lp_bf16 - lp2).abs().max() < 0.1

    critic = FSDPEngine(engine_spec(path, "value"), optim_spec(), device=CPU)
    values2 = gather_rows(critic.compute_values(my_rows(batch, rank), micro_batch_size=2))
    metrics = critic.train_mini_batch(my_rows(batch, rank), value_loss_fn, micro_batch_size=2, temperature=None, with_entropy=False)
    assert math.isfinite(metrics["loss"]) and metrics["step_skipped"] == 0.0
    rm = FSDPEngine(engine_spec(path, "reward"), None, device=CPU)
    scores2 = gather_rows(rm.compute_scores(my_rows(batch, rank), micro_batch_size=4))

    if rank == 0:
        one = FSDPEngine(engine_spec(path, "causal_lm"), None, device=CPU, dp_group=solo)
        out1 = one.compute_log_probs(batch, temperature=temp, micro_batch_size=8, with_entropy=True)
        assert (out1["log_probs"] - lp2).abs().max() <= 1e-5
        assert (out1["entropy"] - ent2).abs().max() <= 1e-5
        ref_lp, ref_ent = hf_reference(path, batch, temp)
        real = batch["response_mask"].bool()  # padding removed: cells without a token are 0, not scored
        assert (ref_lp - lp2)[real].abs().max() <= 1e-5 and not lp2[~real].any()
        assert (ref_ent - ent2)[real].abs().max() <= 1e-5 and not ent2[~real].any()
        with torch.no_grad():
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
            torch.manual_seed(0)
            tok = AutoModelForTokenClassification.from_pretrained(path, num_labels=1).eval()
            assert (tok(**inputs).logits[:, P - 1 : P + R - 1, 0] - values2)[real].abs().max() <= 1e-5
            torch.manual_seed(0)
            seq = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
            assert (seq(**inputs).logits[:, 0] - scores2).abs().max() <= 1e-5
    dist.barrier()


def check_training(rank: int, path: str, tmp: str) -> None:
    """Micro-batching / DP invariance of grads, clipping, warm-up, SFT progress, checkpoint round trip."""
    from transformers import AutoModelForCausalLM

    from workers.engines.fsdp2 import FSDPEngine

    batch = make_batch()
    mine = my_rows(batch, rank)
    solo = dist.new_group([0])
    kw = dict(temperature=1.0, with_entropy=True)
    a = FSDPEngine(engine_spec(path, "causal_lm"), optim_spec(), device=CPU)
    b = FSDPEngine(
        engine_spec(path, "causal_lm", activation_checkpointing=True, cpu_offload=True), optim_spec(), device=CPU
    )
    seen_a, seen_b = capture_grads(a), capture_grads(b)
    ma = a.train_mini_batch(mine, sft_loss, micro_batch_size=1, **kw)
    mb = b.train_mini_batch(mine, sft_loss, micro_batch_size=4, **kw)
    grads_a = dict(seen_a)
    assert_close_dicts(grads_a, seen_b, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in a.module.parameters())  # freed right after the step
    assert_close_dicts(full_params(a), full_params(b), atol=1e-5, rtol=1e-4)  # Adam amplifies ~1e-9 grad noise
    assert abs(ma["loss"] - mb["loss"]) < 1e-6 and abs(ma["grad_norm"] - mb["grad_norm"]) < 1e-5
    assert ma["grad_norm"] > 1.0  # so the clip below is active
    clipped = math.sqrt(sum(float(g.square().sum()) for g in grads_a.values()))
    assert abs(clipped - 1.0) < 1e-4
    if rank == 0:  # all 8 rows on one rank, uneven micro-batches (3, 3, 2): same loss, norm and grads
        c = FSDPEngine(engine_spec(path, "causal_lm"), optim_spec(), device=CPU, dp_group=solo)
        seen_c = capture_grads(c)
        mc = c.train_mini_batch(batch, sft_loss, micro_batch_size=3, **kw)
        assert abs(ma["loss"] - mc["loss"]) < 1e-6 and abs(ma["grad_norm"] - mc["grad_norm"]) < 1e-5
        assert_close_dicts(grads_a, seen_c, atol=1e-6, rtol=1e-5)
    dist.barrier()

    before = full_params(b)  # a non-finite gradient norm skips the update but not the LR schedule
    skipped = b.train_mini_batch(mine, lambda o, m, n: (sft_loss(o, m, n)[0] * math.nan, {}), micro_batch_size=4, **kw)
    assert skipped["step_skipped"] == 1.0 and not math.isfinite(skipped["grad_norm"])
    assert_close_dicts(before, full_params(b), atol=0.0)
    assert b.lr_scheduler.last_epoch == 2

    history = [ma] + [a.train_mini_batch(mine, sft_loss, micro_batch_size=2, **kw) for _ in range(4)]
    lrs = [m["lr"] for m in history]
    assert lrs == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2, 1e-2])
    losses = [m["loss"] for m in history]
    assert losses[-1] < losses[0] - 0.1, losses

    ckpt = os.path.join(tmp, "ckpt")
    a.save_checkpoint(ckpt)
    fresh = FSDPEngine(engine_spec(path, "causal_lm"), optim_spec(), device=CPU)
    fresh.load_checkpoint(ckpt)
    assert_close_dicts(full_params(a), full_params(fresh), atol=0.0)
    for key, state in a.optimizer.state.items():
        name = next(n for n, p in a.module.named_parameters() if p is key)
        other = fresh.optimizer.state[dict(fresh.module.named_parameters())[name]]
        for field in ("step", "exp_avg", "exp_avg_sq"):
            va, vb = state[field], other[field]
            va, vb = (v.full_tensor() if hasattr(v, "full_tensor") else v for v in (va, vb))
            assert torch.equal(va, vb), (name, field)
    assert fresh.lr_scheduler.state_dict() == a.lr_scheduler.state_dict()
    na = a.train_mini_batch(mine, sft_loss, micro_batch_size=2, **kw)
    nf = fresh.train_mini_batch(mine, sft_loss, micro_batch_size=2, **kw)
    assert na == nf
    assert_close_dicts(full_params(a), full_params(fresh), atol=0.0)

    ref = FSDPEngine(engine_spec(path, "causal_lm"), None, device=CPU)
    ref.load_checkpoint(ckpt)  # weights only
    lp = gather_rows(ref.compute_log_probs(mine, temperature=1.0, micro_batch_size=4, with_entropy=False)["log_probs"])
    if rank == 0:
        assert sorted(os.listdir(ckpt)) == ["config.json", "lr_scheduler.pt", "model.safetensors", "optimizer_dcp"]
        hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
        assert torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
        ref_lp, _ = hf_reference(ckpt, batch, 1.0)
        assert (ref_lp - lp)[batch["response_mask"].bool()].abs().max() <= 1e-5
    dist.barrier()


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_forward_parity_value_reward_and_frozen(tmp_path):
    run_2_ranks("check_forwards", tmp_path)


@pytest.mark.timeout(180)
def test_training_invariance_progress_and_checkpoint(tmp_path):
    run_2_ranks("check_training", tmp_path)


def test_lr_schedule_warmup_constant_and_cosine():
    const = optim_spec(warmup_steps=4, total_steps=10)
    assert [lr_ratio(s, const) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    cos = optim_spec(warmup_steps=2, total_steps=12, schedule="cosine", min_lr_ratio=0.1)
    got = [lr_ratio(s, cos) for s in (0, 1, 2, 7, 12, 20)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5, 0.1, 0.1])


def test_spec_validation():
    with pytest.raises(ValueError, match="model_kind"):
        engine_spec("x", "policy")
    with pytest.raises(ValueError, match="dtype"):
        engine_spec("x", "causal_lm", param_dtype="bf16")
    with pytest.raises(ValueError, match="share_prompts .* remove_padding"):
        engine_spec("x", "causal_lm", share_prompts=True, remove_padding=False)
    with pytest.raises(ValueError, match="schedule"):
        optim_spec(schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        optim_spec(warmup_steps=30)
    assert optim_spec(betas=[0.9, 0.95]).betas == (0.9, 0.95)


def test_sft_loss_contributions_sum_to_token_mean():
    batch = make_batch()
    log_probs = -torch.rand(len(batch), R)
    mask = batch["response_mask"].float()
    norm = LossNorm(global_tokens=float(mask.sum()), global_seqs=float(len(batch)), dp_size=1)
    parts = [sft_loss({"log_probs": log_probs[i : i + 3]}, mb, norm)[0] for i, mb in zip(range(0, 8, 3), batch.split_by_size(3))]
    assert float(sum(parts)) == pytest.approx(float(-(log_probs * mask).sum() / mask.sum()))


def test_resumed_optimizer_takes_the_configured_hyperparameters():
    """A checkpoint's saved lr must not silently override a new optim.lr; an unchanged config changes nothing."""
    from workers.engines.fsdp2.optim import apply_hyperparameters, build_lr_scheduler, build_optimizer

    spec = optim_spec(warmup_steps=2, total_steps=10)
    param = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([param], spec)
    sched = build_lr_scheduler(opt, spec)
    for _ in range(3):
        param.grad = torch.ones(3)
        opt.step()
        sched.step()
    saved_opt, saved_sched, lr_before = opt.state_dict(), sched.state_dict(), opt.param_groups[0]["lr"]

    def restored(with_spec):
        p = torch.nn.Parameter(torch.ones(3))
        o = build_optimizer([p], with_spec)
        s = build_lr_scheduler(o, with_spec)
        o.load_state_dict(saved_opt)
        s.load_state_dict(saved_sched)
        apply_hyperparameters(o, s, with_spec)
        return o, s

    same, same_sched = restored(spec)
    assert same.param_groups[0]["lr"] == lr_before and same_sched.base_lrs == [spec.lr]
    changed, changed_sched = restored(optim_spec(warmup_steps=2, total_steps=10, lr=1e30, betas=(0.5, 0.6)))
    assert changed.param_groups[0]["lr"] == 1e30 and changed.param_groups[0]["betas"] == (0.5, 0.6)
    changed_sched.step()
    assert changed.param_groups[0]["lr"] == 1e30  # the schedule goes on from the new base


def check_rank0_reads_alone(rank: int, path: str, tmp: str) -> None:
    """Only rank 0 holds a full copy of the checkpoint on the host; the other rank builds on the meta device."""
    import threading

    import psutil

    from workers.engines.fsdp2 import FSDPEngine

    model_bytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    proc, samples, done = psutil.Process(), [], threading.Event()

    def sample() -> None:  # the resident set's peak while the engine is built (ru_maxrss saw earlier peaks)
        while not done.is_set():
            samples.append(proc.memory_info().rss)
            done.wait(0.002)

    base = proc.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    engine = FSDPEngine(engine_spec(path, "causal_lm"), None, device=CPU)
    done.set()
    sampler.join()
    grew = [torch.zeros(1) for _ in range(2)]
    dist.all_gather(grew, torch.tensor([float(max(samples) - base)]))
    if rank == 0:
        assert grew[0].item() >= 0.9 * model_bytes, (grew, model_bytes)  # rank 0 read the whole checkpoint
        # rank 1 holds its shard (half) plus one tensor at a time and allocator slack; a full read would be >= 1x
        assert grew[1].item() < 0.9 * model_bytes, (grew, model_bytes)
    out = engine.compute_log_probs(my_rows(make_batch(), rank), temperature=1.0, micro_batch_size=4, with_entropy=False)
    assert torch.isfinite(out["log_probs"]).all()


@pytest.mark.timeout(180)
def test_only_rank0_reads_the_checkpoint_into_host_memory(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = str(tmp_path / "wide")
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                                 num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True)).save_pretrained(path)
    mp.spawn(_entry, args=(__name__, "check_rank0_reads_alone", path, str(tmp_path), _free_port()), nprocs=2, join=True)
