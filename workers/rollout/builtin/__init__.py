"""Baton's built-in torch rollout engine: a compact Llama/Qwen2 decoder with a batched KV-cached sampler.

Layout: `spec` (HF config -> shapes, rejects unsupported fields), `model` (the decoder),
`weights` (HF names -> fused tensors), `kv_cache`, `sampling`, `decode_loop` (one group of
prompts), `stats`, `engine` (the RolloutEngine: generate / sleep / wake_up / load_weights),
`cpu_kernels` (kernels="cpp": the same forward as one C++ call per prefill / decode step on CPU).
"""
from workers.rollout.builtin.engine import BuiltinRolloutEngine
from workers.rollout.builtin.spec import DecoderSpec, spec_from_hf_config

__all__ = ["BuiltinRolloutEngine", "DecoderSpec", "spec_from_hf_config"]
