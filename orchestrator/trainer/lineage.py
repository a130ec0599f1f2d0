"""Which prompts each step trained on: `lineage.jsonl`, one line per step, rewound with the metrics on resume.

A line holds the step, the epoch-qualified dataset rows of its batch (`e<epoch>-<row>`) and the
policy versions that generated them. After any number of interruptions and resumes the file
describes the run as it counts (steps thrown away by a resume are removed), so "every prompt of
an epoch trained on exactly once" is a check anyone can run on it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from workers.batch import Batch

_UID = re.compile(r"^e(\d+)s\d+r\d+-(.+)$")


def prompt_keys(batch: Batch) -> list[str]:
    """One key per prompt group (`e<epoch>-<row>`), in batch order."""
    keys: list[str] = []
    for uid in batch.non_tensors["uid"]:
        m = _UID.match(str(uid))
        key = f"e{m.group(1)}-{m.group(2)}" if m else str(uid)
        if not keys or keys[-1] != key:
            keys.append(key)
    return keys


class DataLineage:
    def __init__(self, path: Path):
        self.path = path

    def record(self, step: int, batch: Batch) -> None:
        versions = sorted({int(v) for v in batch["policy_version"].tolist()}) if "policy_version" in batch else []
        line = json.dumps({"step": step, "prompts": prompt_keys(batch), "policy_versions": versions})
        with self.path.open("a") as f:
            f.write(line + "\n")

    def rewind(self, step: int) -> None:
        """Keep the lines of steps <= `step` (atomically)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)
