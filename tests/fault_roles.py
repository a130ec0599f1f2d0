"""Worker subclasses that let a test reach into a rollout engine or kill a worker (importable by Ray workers
via PYTHONPATH).

They add methods, or a real SIGKILL of their own process, and change nothing else: every other call
runs the production code.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

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


class KillOnceActor(ActorRolloutWorker):
    """Rank 1 SIGKILLs its own process when its Nth actor update starts: a real dead worker, once per run.

    A marker file in the run directory keeps the rebuilt worker (a new process) from dying again.
    """

    KILL_AT_UPDATE = 5

    @register(Dispatch.DP_MESH)
    def update_actor(self, batch):
        self._updates = getattr(self, "_updates", 0) + 1
        marker = Path(self.cfg.trainer.output_dir) / "killed-once"
        if self.rank == 1 and self._updates == self.KILL_AT_UPDATE and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().update_actor(batch)


class AlwaysKillActor(ActorRolloutWorker):
    """Rank 1 dies at its second actor update in every process: more failures than any restart budget."""

    @register(Dispatch.DP_MESH)
    def update_actor(self, batch):
        self._updates = getattr(self, "_updates", 0) + 1
        if self.rank == 1 and self._updates == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().update_actor(batch)


class KillAtThirdUpdateActor(KillOnceActor):
    KILL_AT_UPDATE = 3
