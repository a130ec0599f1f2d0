"""Worker subclasses that let a test reach into a rollout engine (importable by Ray workers via PYTHONPATH).

They add methods and change nothing else, so every other call runs the production code.
"""
from __future__ import annotations

import torch

from workers.roles.actor_rollout import ActorRolloutWorker
from workers.roles.rollout_worker import RolloutWorker
from workers.runtime import Dispatch, register


class _RolloutAccess:
    rollout: object

    @register(Dispatch.ONE_TO_ALL)
    def corrupt_rollout_weight(self, name: str, delta: float) -> None:
        """Silent corruption after a sync: the failure the post-sync check exists to catch."""
        with torch.no_grad():
            self.rollout.hf_weight(name).add_(delta)

    @register(Dispatch.ONE_TO_ALL)
    def rollout_weights(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Copies of what this rank's rollout engine holds for those HF names."""
        return {name: self.rollout.hf_weight(name).detach().clone().cpu() for name in names}


class InspectableActorRolloutWorker(_RolloutAccess, ActorRolloutWorker):
    pass


class InspectableRolloutWorker(_RolloutAccess, RolloutWorker):
    pass
