"""Rollout engines behind one interface (base.py): the built-in torch engine and vLLM."""
