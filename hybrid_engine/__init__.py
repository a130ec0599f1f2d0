"""Baton hybrid_engine: time-share one device between a training module and a rollout engine.

Works on small interfaces only (a torch module, possibly FSDP2-sharded; a torch optimizer;
an object with sleep/wake_up/load_weights) and imports nothing from `workers` or
`orchestrator`.
"""
from hybrid_engine.memory import MemorySnapshot, memory_snapshot
from hybrid_engine.mode_switch import HybridEngine, Mode, SwitchReport
from hybrid_engine.names import hf_name, param_group, tied_aliases
from hybrid_engine.offload import OffloadedStateError, OffloadReport, TrainingStateOffloader
from hybrid_engine.protocols import SleepableRollout, accepts_wake_up_tags
from hybrid_engine.verify import VerifyReport, WeightSyncMismatch, group_param_diffs, verify_sync
from hybrid_engine.weight_stream import StreamStats, WeightStream, plan_buckets

__all__ = [
    "HybridEngine",
    "MemorySnapshot",
    "Mode",
    "OffloadReport",
    "OffloadedStateError",
    "SleepableRollout",
    "StreamStats",
    "SwitchReport",
    "TrainingStateOffloader",
    "VerifyReport",
    "WeightStream",
    "WeightSyncMismatch",
    "accepts_wake_up_tags",
    "group_param_diffs",
    "hf_name",
    "memory_snapshot",
    "param_group",
    "plan_buckets",
    "tied_aliases",
    "verify_sync",
]
