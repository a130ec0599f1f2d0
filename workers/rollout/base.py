"""The rollout-engine interface shared by the built-in torch engine and vLLM.

The driver and the hybrid engine only ever talk to a rollout engine through these
four calls, so engines are interchangeable by config (`rollout=builtin|vllm`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, runtime_checkable

import torch

from workers.batch import Batch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one generation call; built by the driver from the `rollout` config."""

    n: int  # samples per prompt; rows come back interleaved (prompt 0's n samples first)
    temperature: float  # 0 means greedy
    top_p: float  # 1.0 disables nucleus filtering
    top_k: int  # -1 disables top-k filtering
    max_new_tokens: int
    seed: int  # generation is deterministic for a fixed seed, batch and weights
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)  # EOS ids; the stop token is kept in the response
    repetition_stop_window: int = 0  # MiniMax-M1 early stop: window K (0 disables)
    repetition_stop_prob: float = 1.0  # ... stop once the last K tokens all had prob > this


@runtime_checkable
class RolloutEngine(Protocol):
    """Generate from a batch of left-padded prompts; swap weights in place; free memory when idle.

    `generate` input Batch tensors:  input_ids [B, P] (left-padded with pad_token_id),
    attention_mask [B, P] (1 on real tokens). Non-tensor fields (uid, ground_truth, ...) are carried.
    Output Batch (B * n rows, interleaved):
      prompts [B*n, P], responses [B*n, R] (right-padded with pad_token_id),
      response_mask [B*n, R] (1 on generated tokens incl. the stop token),
      input_ids [B*n, P+R], attention_mask [B*n, P+R], position_ids [B*n, P+R],
      rollout_log_probs [B*n, R] (float32 log-prob of each sampled token under
      softmax(logits / temperature), 0 on padding; greedy uses temperature 1),
    non-tensor fields repeated n times interleaved; meta gains `rollout_stats` (dict of floats).
    """

    def generate(self, batch: Batch, params: SamplingParams) -> Batch: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...


def scoring_temperature(temperature: float) -> float:
    """The temperature log-probs are scored at: softmax(logits / T) of the sampling temperature, so the trainer
    scores exactly the distribution the rollout sampled from; greedy decoding (T = 0) is scored at 1."""
    return temperature if temperature > 0 else 1.0
