"""Every variant of the comparison benches (`baton bench padding|throughput|...`) is a valid config.

A bench runs its variants one after another for minutes each; a variant that contradicts a default
(e.g. padded rows with prompt sharing still on) must fail here, not half-way through a bench.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from orchestrator.bench.compare_bench import SETS
from orchestrator.bench.variants import run_config

CASES = [(name, variant, overrides) for name, (_, _, variants) in SETS.items()
         for variant, overrides in variants.items()]


@pytest.mark.parametrize("name,variant,overrides", CASES, ids=[f"{n}: {v}" for n, v, _ in CASES])
def test_bench_variant_composes_and_validates(name, variant, overrides, tmp_path: Path):
    cfg = run_config(name, overrides, 2, tmp_path, [])
    for item in overrides:  # a boolean switch took effect (nothing later in the composition reset it)
        key, _, value = item.partition("=")
        if value in ("true", "false"):
            assert OmegaConf.select(cfg, key) == (value == "true"), (variant, key)
