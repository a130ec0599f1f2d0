"""Model FLOPs utilisation per phase: how much of the machine's matmul peak a phase turns into model work.

Convention (the PaLM-style MFU, which counts the work the model needs, not what the kernels did):
- N = parameters that take part in a matmul per token: every parameter except the input embedding table
  (a lookup), with the LM head counted once even when tied to the embedding.
- forward: 2 N FLOPs per token; forward + backward: 6 N. The attention score/value term (~4 x layers x
  hidden x context per token) is left out, as is usual at these short contexts.
- Tokens: generation counts generated tokens; training-side phases count every attended token
  (prompt and response), which is what their forwards process, except that with prompt sharing
  (model.share_prompts) the actor's and ref's forwards compute a prompt once per uid, and MFU counts
  that (`perf/tokens_per_s` stays per attended token: the throughput a user gets).
- Peak: the best fp32 FLOP/s of a square matmul measured here with one torch thread, times the number of
  worker ranks that ran the phase (each Ray worker gets one thread on CPU). On GPU clusters the driver cannot measure the
  workers' device, so MFU is not reported there (`peak_flops` returns None).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

FORWARD_FLOPS_PER_PARAM = 2
TRAIN_FLOPS_PER_PARAM = 6
MFU_PREFIX = "perf/mfu/"


def matmul_peak_flops(size: int = 512, repeats: int = 5, threads: int = 1) -> float:
    """Best FLOP/s of a size x size fp32 matmul on `threads` torch threads of this process."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best


def matmul_params(model_path: str | Path) -> int:
    """N of the module docstring, from the checkpoint's config alone (the model is built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_path), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    tied = head is not None and head.weight is embedding
    return total - embedding.numel() + (embedding.numel() if tied else 0)


@dataclass(frozen=True)
class PhaseFlops:
    """FLOPs per token of each timed phase, and one rank's peak they are measured against (None: not reported)."""

    params: int
    peak_flops_per_rank: float | None

    def flops_per_token(self, phase: str) -> int:
        trains = phase.startswith("update")
        return (TRAIN_FLOPS_PER_PARAM if trains else FORWARD_FLOPS_PER_PARAM) * self.params

    def mfu(self, phase: str, tokens_per_s: float, ranks: int) -> float | None:
        """Model FLOP/s of `phase` over the peak of the `ranks` workers that ran it."""
        if self.peak_flops_per_rank is None or math.isnan(tokens_per_s):  # NaN: the phase took no time
            return None
        return self.flops_per_token(phase) * tokens_per_s / (ranks * self.peak_flops_per_rank)


def phase_flops(model_path: str | Path, *, on_gpu: bool) -> PhaseFlops:
    """The run's FLOP model; on CPU each rank's peak is one thread's matmul peak (one thread per worker)."""
    return PhaseFlops(params=matmul_params(model_path), peak_flops_per_rank=None if on_gpu else matmul_peak_flops())
