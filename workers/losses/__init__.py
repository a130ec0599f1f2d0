"""Worker-side RL losses: policy objectives (registry), value, KL, entropy, aggregation.

Importing the package registers every policy loss.
"""

from workers.losses import policy as _policy  # noqa: F401  (registers ppo, cispo, gspo, reinforce)
from workers.losses import policy_cov as _policy_cov  # noqa: F401  (registers clip_cov, kl_cov)
from workers.losses import sapo as _sapo  # noqa: F401  (registers sapo)
from workers.losses.aggregation import AGG_MODES, LossAgg, aggregate, count_seqs, count_tokens
from workers.losses.entropy import entropy_from_logits, entropy_loss
from workers.losses.kl import KL_ESTIMATORS, KL_LOSS_ESTIMATORS, kl_loss, kl_penalty
from workers.losses.masked import masked_mean, masked_sum, masked_var, masked_whiten
from workers.losses.registry import (
    get_policy_loss_fn,
    list_policy_losses,
    policy_loss_params,
    register_policy_loss,
)
from workers.losses.value import value_loss

__all__ = [
    "AGG_MODES",
    "KL_ESTIMATORS",
    "KL_LOSS_ESTIMATORS",
    "LossAgg",
    "aggregate",
    "count_seqs",
    "count_tokens",
    "entropy_from_logits",
    "entropy_loss",
    "get_policy_loss_fn",
    "kl_loss",
    "kl_penalty",
    "list_policy_losses",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss_params",
    "register_policy_loss",
    "value_loss",
]
