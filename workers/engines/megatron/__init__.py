"""Megatron-core training engine: tensor, pipeline (and sequence) parallel, HF conversion at the edges."""
