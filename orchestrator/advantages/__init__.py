"""Driver-side advantage estimators (pure tensor code), looked up by config name.

Importing the package registers: gae, grpo, rloo, reinforce_plus_plus,
reinforce_plus_plus_baseline, remax, gpg, opo, grpo_passk.
"""

from orchestrator.advantages import distill as _distill  # noqa: F401  (registration side effect)
from orchestrator.advantages import gae as _gae  # noqa: F401
from orchestrator.advantages import gpg as _gpg  # noqa: F401
from orchestrator.advantages import group as _group  # noqa: F401
from orchestrator.advantages import opo as _opo  # noqa: F401
from orchestrator.advantages import passk as _passk  # noqa: F401
from orchestrator.advantages import reinforce as _reinforce  # noqa: F401
from orchestrator.advantages.inputs import AdvantageInputs, scores_to_token_level
from orchestrator.advantages.registry import (
    AdvantageEstimator,
    advantage_params,
    compute_advantage,
    get_advantage_estimator,
    get_advantage_fn,
    list_advantages,
    register_advantage,
)

__all__ = [
    "AdvantageEstimator",
    "AdvantageInputs",
    "advantage_params",
    "compute_advantage",
    "get_advantage_estimator",
    "get_advantage_fn",
    "list_advantages",
    "register_advantage",
    "scores_to_token_level",
]
