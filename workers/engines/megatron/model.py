"""A Megatron-core GPTModel pipeline stage built from an HF Llama/Qwen2 checkpoint.

Only what the conversion can map exactly is accepted (`check_convertible`): RMSNorm, SwiGLU,
RoPE without scaling, GQA, tied or untied embeddings, QKV bias for Qwen2. Dropout is off, as in
the FSDP2 engine: RL needs the training forward to be the function that scored the rollout.

Tied embeddings over several pipeline stages: Megatron would copy the embedding to the last
stage with a CUDA-only all-reduce at construction. Here every stage is built untied and the last
stage's `output_layer` is loaded from the same HF tensor; the engine keeps the two copies equal
by summing their gradients over the embedding group (first and last stage) before each step.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from workers.engines.megatron.convert import DecoderShape, hf_to_megatron, shard, split_kind

SUPPORTED_MODEL_TYPES = {"llama": False, "qwen2": True}  # model_type -> QKV bias


class UnsupportedModel(ValueError):
    """An HF config the conversion cannot map exactly; names the field."""


def hf_config_dict(model_path: str) -> dict:
    conf = json.loads((Path(model_path) / "config.json").read_text())
    return conf.get("text_config", conf)


def check_convertible(conf: dict) -> None:
    """Raise UnsupportedModel naming what does not map onto GPTModel's local layer spec."""
    model_type = conf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(f"model_type {model_type!r}: the Megatron backend converts "
                               f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))} checkpoints")
    if conf.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"hidden_act {conf.get('hidden_act')!r}: only SwiGLU (silu) is converted")
    rope = conf.get("rope_parameters") or conf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise UnsupportedModel(f"rope scaling {rope.get('rope_type', rope.get('type'))!r} is not converted")
    if model_type == "llama" and (conf.get("attention_bias") or conf.get("mlp_bias")):
        raise UnsupportedModel("llama with attention_bias/mlp_bias is not converted")
    head_dim = conf.get("head_dim") or conf["hidden_size"] // conf["num_attention_heads"]
    if head_dim * conf["num_attention_heads"] != conf["hidden_size"]:
        raise UnsupportedModel("head_dim x num_attention_heads != hidden_size is not converted")


def decoder_shape(conf: dict) -> DecoderShape:
    check_convertible(conf)
    return DecoderShape(
        num_layers=conf["num_hidden_layers"], hidden_size=conf["hidden_size"], num_heads=conf["num_attention_heads"],
        num_kv_heads=conf.get("num_key_value_heads") or conf["num_attention_heads"],
        head_dim=conf["hidden_size"] // conf["num_attention_heads"], intermediate_size=conf["intermediate_size"],
        vocab_size=conf["vocab_size"], tied=bool(conf.get("tie_word_embeddings", False)),
        qkv_bias=SUPPORTED_MODEL_TYPES[conf["model_type"]])


def rope_theta(conf: dict) -> float:
    rope = conf.get("rope_parameters") or {}
    return float(rope.get("rope_theta", conf.get("rope_theta", 10000.0)))


def transformer_config(conf: dict, *, tp: int, pp: int, sequence_parallel: bool, compute_dtype: torch.dtype):
    from megatron.core.transformer.transformer_config import TransformerConfig

    shape = decoder_shape(conf)
    return TransformerConfig(
        num_layers=shape.num_layers, hidden_size=shape.hidden_size, num_attention_heads=shape.num_heads,
        num_query_groups=shape.num_kv_heads, ffn_hidden_size=shape.intermediate_size, kv_channels=shape.head_dim,
        normalization="RMSNorm", layernorm_epsilon=float(conf.get("rms_norm_eps", 1e-6)), gated_linear_unit=True,
        activation_func=F.silu, add_bias_linear=False, add_qkv_bias=shape.qkv_bias, attention_dropout=0.0,
        hidden_dropout=0.0, bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        use_cpu_initialization=True, params_dtype=compute_dtype, pipeline_dtype=compute_dtype,
        bf16=compute_dtype == torch.bfloat16, fp16=compute_dtype == torch.float16,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=sequence_parallel,
        batch_p2p_comm=False, calculate_per_token_loss=True,
    )


def stage_layers(num_layers: int, pp: int, pp_rank: int) -> range:
    per = num_layers // pp
    return range(pp_rank * per, (pp_rank + 1) * per)


class ParallelRMSNorm(torch.nn.RMSNorm):
    """torch's RMSNorm (HF's formula) built the way Megatron builds norms, whose weight carries Megatron's
    `sequence_parallel` flag, so its gradient is summed over TP ranks under sequence parallelism.

    Megatron's own torch-norm fallback (used without Apex/TransformerEngine, e.g. on CPU) refuses
    sequence parallelism; the norm itself only ever sees this rank's tokens, which is what SP needs.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                 zero_centered_gamma: bool = False, normalization: str = "RMSNorm"):
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel


def block_spec(config, pp_rank: int):
    """Megatron's local layer spec with `ParallelRMSNorm` for every norm of the stage."""
    import copy

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    layer = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    layer.submodules.input_layernorm = ParallelRMSNorm
    layer.submodules.pre_mlp_layernorm = ParallelRMSNorm
    layers = get_num_layers_to_build(config, None, pp_rank)
    return TransformerBlockSubmodules(layer_specs=[layer] * layers, layer_norm=ParallelRMSNorm)


def build_stage(conf: dict, config, *, pp_rank: int, pp: int) -> nn.Module:
    """This rank's stage of the model (random init; `load_hf_weights` fills it)."""
    from megatron.core.models.gpt import GPTModel

    shape = decoder_shape(conf)
    return GPTModel(
        config, block_spec(config, pp_rank), vocab_size=shape.padded_vocab(config.tensor_model_parallel_size),
        max_sequence_length=conf["max_position_embeddings"], pre_process=pp_rank == 0, post_process=pp_rank == pp - 1,
        parallel_output=True, share_embeddings_and_output_weights=shape.tied and pp == 1,
        position_embedding_type="rope", rotary_base=rope_theta(conf),
    )


def _hf_tensors(model_path: str, names: set[str]) -> dict[str, Tensor]:
    """Only the named tensors, read lazily from the safetensors files (memory ~ one stage, not the model)."""
    out: dict[str, Tensor] = {}
    for file in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                if key in names:
                    out[key] = f.get_tensor(key)
    return out


def stage_hf_names(shape: DecoderShape, layers: range, *, first: bool, last: bool) -> set[str]:
    names = {"model.embed_tokens.weight"} if first or (last and shape.tied) else set()
    for i in layers:
        p = f"model.layers.{i}."
        names |= {p + s for s in ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                                  "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                  "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")}
        if shape.qkv_bias:
            names |= {p + f"self_attn.{x}_proj.bias" for x in "qkv"}
    if last:
        names.add("model.norm.weight")
        if not shape.tied:
            names.add("lm_head.weight")
    return names


@torch.no_grad()
def load_hf_weights(module: nn.Module, model_path: str, conf: dict, *, tp: int, tp_rank: int, pp: int,
                    pp_rank: int) -> None:
    """Fill this rank's stage with its TP shards of the HF weights; every parameter must be covered."""
    shape = decoder_shape(conf)
    layers = stage_layers(shape.num_layers, pp, pp_rank)
    first, last = pp_rank == 0, pp_rank == pp - 1
    hf = _hf_tensors(model_path, stage_hf_names(shape, layers, first=first, last=last))
    full = hf_to_megatron(hf, shape, layers, first=first, last=last, tp=tp)
    params = dict(module.named_parameters())
    missing = sorted(set(params) - set(full))
    if missing:
        raise RuntimeError(f"megatron: no HF weights for {missing[:4]} (conversion incomplete)")
    for name, param in params.items():
        piece = shard(full[name], split_kind(name), tp_rank, tp)
        if piece.shape != param.shape:
            raise RuntimeError(f"megatron: {name} is {tuple(param.shape)} on this rank, conversion gave "
                               f"{tuple(piece.shape)}")
        param.copy_(piece.to(param.dtype))
