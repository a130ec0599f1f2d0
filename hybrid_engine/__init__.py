"""Baton hybrid_engine: time-share one device between a training module and a rollout engine.

For split placement (rollout on devices of its own) the same bucketed weight stream goes to
the rollout engines over a process group of its own instead (sync_group.py, broadcast.py).

Works on small interfaces only (a TrainingState: offload/reload and a weight export, which
ModuleState provides for a torch module, possibly FSDP2-sharded, and its optimizer; an object
with sleep/wake_up/load_weights) and imports nothing from `workers` or `orchestrator`.
"""
from hybrid_engine.broadcast import BroadcastStats, receive_weights, send_weights
from hybrid_engine.memory import MemorySnapshot, memory_snapshot
from hybrid_engine.mode_switch import HybridEngine, Mode, SwitchReport
from hybrid_engine.names import hf_name, param_group, tied_aliases
from hybrid_engine.offload import OffloadedStateError, OffloadReport, TrainingStateOffloader
from hybrid_engine.protocols import SleepableRollout, accepts_wake_up_tags
from hybrid_engine.sync_group import SyncGroup, connect_sync_store, join_sync_group, open_sync_store
from hybrid_engine.training_state import ModuleState, TrainingState
from hybrid_engine.verify import VerifyReport, WeightSyncMismatch, group_param_diffs, verify_sync
from hybrid_engine.weight_stream import StreamStats, WeightStream, plan_buckets

__all__ = [
    "BroadcastStats",
    "HybridEngine",
    "MemorySnapshot",
    "Mode",
    "ModuleState",
    "OffloadReport",
    "OffloadedStateError",
    "SleepableRollout",
    "StreamStats",
    "SwitchReport",
    "SyncGroup",
    "TrainingState",
    "TrainingStateOffloader",
    "VerifyReport",
    "WeightStream",
    "WeightSyncMismatch",
    "accepts_wake_up_tags",
    "connect_sync_store",
    "group_param_diffs",
    "hf_name",
    "join_sync_group",
    "memory_snapshot",
    "open_sync_store",
    "param_group",
    "plan_buckets",
    "receive_weights",
    "send_weights",
    "tied_aliases",
    "verify_sync",
]
