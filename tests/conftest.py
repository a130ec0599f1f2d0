"""One local Ray cluster for the whole test session; tests that need Ray take the `ray_cluster` fixture."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent

# Ray workers inherit the environment of the process that starts the cluster: let them import
# the test-only roles in tests/ as well as the project packages.
os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO), os.environ.get("PYTHONPATH", "")])
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from orchestrator.ray_cluster import init_ray

    # Logical CPUs exceed the 2 physical cores so that a colocated pool and a split rollout pool fit at once.
    init_ray(address=None, num_cpus=8, num_gpus=0, object_store_bytes=1 << 30)
    yield ray
    ray.shutdown()
