"""Roles hosted by worker groups: actor (+ rollout, hybrid), reference, critic, reward model."""
