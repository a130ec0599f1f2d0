"""Rewards: the name -> function registry and the built-in rule rewards.

Importing the package registers the built-ins, so `get_reward_fn("exact_answer")`
works after `import orchestrator.rewards` (or any import from it).
"""
from orchestrator.rewards.registry import RewardFn, get_reward_fn, list_rewards, register_reward, score_batch
from orchestrator.rewards import rule_rewards  # noqa: F401  (registers the built-in rewards)

__all__ = ["RewardFn", "get_reward_fn", "list_rewards", "register_reward", "score_batch"]
