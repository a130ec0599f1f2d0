"""One micro-batch through the model: token log-probs / entropy, per-token values, or sequence scores.

Layout (veRL): input_ids [b, P+R] = left-padded prompt + right-padded response. The token
at response position t is predicted by the logits at position P-1+t, so only the last R+1
positions are projected to the vocabulary, and the very last one is dropped.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.batch import Batch
from workers.engines.chunked_logprobs import chunked_log_probs
from workers.engines.compaction import Compacted, compact
from workers.engines.prompt_sharing import SharedPrompts, share_prompts
from workers.engines.varlen import Packed, pack, pack_cells, scatter_cells

MODEL_INPUT_KEYS: tuple[str, ...] = ("input_ids", "attention_mask", "position_ids")
# Positions scored in fp32 at once (workers/engines/chunked_logprobs.py): 1,024 x 151,936 vocab x 4 B = 0.6 GB.
LOGPROB_CHUNK_POSITIONS = 1024


def check_layout(batch: Batch) -> None:
    """Fail loudly if `responses` is not the tail of `input_ids` (a silent off-by-one otherwise)."""
    input_ids, responses = batch["input_ids"], batch["responses"]
    r = responses.shape[1]
    if input_ids.shape[1] <= r or not torch.equal(input_ids[:, -r:], responses):
        raise ValueError("batch layout: input_ids must end with responses (prompt left-padded, response right-padded)")


def _inputs(batch: Batch, device: torch.device) -> dict[str, Tensor]:
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUT_KEYS}


def _compacted(batch: Batch, device: torch.device, remove_padding: bool) -> Compacted | None:
    """The micro-batch with its padding removed (workers/engines/compaction.py), or None to run it padded."""
    if not remove_padding:
        return None
    inputs = _inputs(batch, device)
    response_width = batch["responses"].shape[1] if "responses" in batch else 0
    return compact(inputs, inputs["input_ids"].shape[1] - response_width)


def _compacted_forward(module: nn.Module, packed: Compacted, varlen: bool, keep: int | None = None) -> Tensor:
    """The model's per-token output (`.logits`) in the compacted [b, W or keep, ...] layout; varlen: run as
    one packed sequence (workers/engines/varlen.py) and scattered back."""
    if not varlen:
        extra = {} if keep is None else {"logits_to_keep": keep}
        return module(**packed.inputs, use_cache=False, **extra).logits
    flat = pack(packed)
    if keep is None:
        return flat.unpack(module(**flat.inputs, use_cache=False).logits)
    return _varlen_logits(module, flat, keep)


def _varlen_logits(module: nn.Module, flat: Packed, keep: int) -> Tensor:
    """Logits of the last `keep` columns of the unpacked [b, W] layout, [b, keep, V], from one packed forward."""
    kept, cells = flat.columns_from(flat.width - keep)
    logits = module(**flat.inputs, use_cache=False, logits_to_keep=kept).logits
    return scatter_cells(logits[0], cells, flat.rows, keep)


def _response_cells(values: Tensor, column: Tensor, valid: Tensor) -> Tensor:
    """values [b, W] read at column [b, R]; 0 where a row has no token (its gradient is 0 there too)."""
    return torch.where(valid, values.gather(1, column), torch.zeros((), dtype=values.dtype, device=values.device))


def _shared_log_probs(module: nn.Module, shared: SharedPrompts, responses: Tensor, *, temperature: float,
                      with_entropy: bool, chunk_positions: int, varlen: bool) -> dict[str, Tensor]:
    """The prompt-shared forward (workers/engines/prompt_sharing.py), read back to [b, R]; varlen: the family
    rows run as one sequence, each under its own mask, instead of padded to the longest."""
    first = int(torch.where(shared.valid, shared.column, shared.width - 1).min())
    if varlen:
        cells = torch.arange(shared.width, device=responses.device)[None, :] < shared.lengths[:, None]
        mask = shared.inputs["attention_mask"][:, 0]
        flat = pack_cells(shared.inputs["input_ids"], shared.inputs["position_ids"], cells,
                          masks=[mask[f, :n, :n] for f, n in enumerate(shared.lengths.tolist())])
        family_logits = _varlen_logits(module, flat, shared.width - first)
    else:
        family_logits = module(**shared.inputs, use_cache=False, logits_to_keep=shared.width - first).logits
    logits = family_logits[shared.family[:, None], (shared.column - first).clamp(min=0)]  # [b, R, V]
    scored = chunked_log_probs(logits, responses, temperature=temperature, with_entropy=with_entropy,
                               chunk_positions=chunk_positions)
    zero = torch.zeros((), device=responses.device)
    return {k: torch.where(shared.valid, v, zero.to(v.dtype)) for k, v in scored.items()}


def causal_lm_forward(
    module: nn.Module, batch: Batch, device: torch.device, *, temperature: float, with_entropy: bool,
    remove_padding: bool = False, chunk_positions: int = LOGPROB_CHUNK_POSITIONS, share: bool = False,
    max_row_tokens: int | None = None, varlen: bool = False,
) -> dict[str, Tensor]:
    """log_probs [b, R] (and entropy [b, R]) in float32 from logits / temperature, chunk by chunk.

    share: rows with the same prompt run as one packed row each (workers/engines/prompt_sharing.py),
    family rows cut at max_row_tokens; a micro-batch with nothing to share runs compacted, or
    (varlen) as one sequence with row boundaries (workers/engines/varlen.py)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (greedy rollouts score with 1.0), got {temperature}")
    responses = batch["responses"].to(device, non_blocking=True)
    r = responses.shape[1]
    if share:
        inputs = _inputs(batch, device)
        shared = share_prompts(inputs, inputs["input_ids"].shape[1] - r, r, max_row_tokens)
        if shared is not None:
            return _shared_log_probs(module, shared, responses, temperature=temperature, with_entropy=with_entropy,
                                     chunk_positions=chunk_positions, varlen=varlen)
    packed = _compacted(batch, device, remove_padding)
    if packed is None:
        out = module(**_inputs(batch, device), use_cache=False, logits_to_keep=r + 1)
        return chunked_log_probs(out.logits[:, :-1, :], responses, temperature=temperature,
                                 with_entropy=with_entropy, chunk_positions=chunk_positions)
    column, valid = packed.response_columns(r)
    # project only the columns some row predicts a response token from: [first, width)
    first = int(torch.where(valid, column, packed.width - 1).min())
    keep = packed.width - first
    logits = _compacted_forward(module, packed, varlen, keep)
    # the token each kept column predicts in its own row (a dummy where it predicts none)
    kept = torch.arange(first, packed.width, device=device)
    t = kept[None, :] - (packed.prompt_width - 1 - packed.start[:, None])
    targets = responses.gather(1, t.clamp(0, r - 1))
    scored = chunked_log_probs(logits, targets, temperature=temperature, with_entropy=with_entropy,
                               chunk_positions=chunk_positions)
    return {k: _response_cells(v, column - first, valid) for k, v in scored.items()}


def value_forward(module: nn.Module, batch: Batch, device: torch.device, *,
                  remove_padding: bool = False, varlen: bool = False) -> dict[str, Tensor]:
    """values [b, R]: the value head at P-1+t, i.e. the state before response token t is emitted."""
    r = batch["responses"].shape[1]
    packed = _compacted(batch, device, remove_padding)
    if packed is None:
        out = module(**_inputs(batch, device), use_cache=False)
        return {"values": out.logits[:, -r - 1 : -1, 0].float()}
    values = _compacted_forward(module, packed, varlen)[..., 0].float()
    return {"values": _response_cells(values, *packed.response_columns(r))}


def reward_forward(module: nn.Module, batch: Batch, device: torch.device, *,
                   remove_padding: bool = False, varlen: bool = False) -> dict[str, Tensor]:
    """scores [b]: the score head at each row's last attended token.

    HF pools at the last token that differs from pad_token_id, which is wrong when EOS ==
    pad ends the response; so the per-token head output is captured and pooled here by
    the attention mask instead.
    """
    captured: list[Tensor] = []
    handle = module.score.register_forward_hook(lambda _m, _i, out: captured.append(out))
    packed = _compacted(batch, device, remove_padding)
    inputs = packed.inputs if packed is not None else _inputs(batch, device)
    flat = pack(packed) if packed is not None and varlen else None
    try:
        out = module(**(flat.inputs if flat is not None else inputs), use_cache=False)
    finally:
        handle.remove()
    per_token = (flat.unpack(captured[0]) if flat is not None else captured[0])[..., 0].float()  # [b, T]
    mask = inputs["attention_mask"]
    if packed is not None:
        last = packed.last_columns()
    else:
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * (mask > 0)).argmax(dim=-1)
    scores = per_token[torch.arange(per_token.shape[0], device=mask.device), last]
    if torch.is_grad_enabled():
        # FSDP2 re-gathers the root group's parameters (the score head among them) for backward from a
        # hook on the root module's outputs; the captured scores bypass those, so tie them in (adds 0).
        scores = scores + 0.0 * out.logits.float().sum()
    return {"scores": scores}


def model_forward(
    module: nn.Module,
    model_kind: str,
    batch: Batch,
    device: torch.device,
    *,
    temperature: float | None,
    with_entropy: bool,
    remove_padding: bool = False,
    share_prompts: bool = False,
    max_row_tokens: int | None = None,
    varlen: bool = False,
) -> dict[str, Tensor]:
    """The outputs a loss or a compute_* call needs for this model kind (share_prompts: causal LMs only;
    varlen: compacted micro-batches run as one packed sequence, workers/engines/varlen.py).

    temperature/with_entropy belong to causal LMs only; other kinds must pass None/False so a
    config that sets them for a critic is caught rather than ignored.
    """
    if model_kind == "causal_lm":
        if temperature is None:
            raise ValueError("a causal LM forward needs a temperature")
        return causal_lm_forward(module, batch, device, temperature=temperature, with_entropy=with_entropy,
                                 remove_padding=remove_padding, share=share_prompts, max_row_tokens=max_row_tokens,
                                 varlen=varlen)
    if temperature is not None or with_entropy:
        raise ValueError(f"temperature/with_entropy apply to causal LMs only, not model_kind {model_kind!r}")
    if model_kind == "value":
        return value_forward(module, batch, device, remove_padding=remove_padding, varlen=varlen)
    return reward_forward(module, batch, device, remove_padding=remove_padding, varlen=varlen)
