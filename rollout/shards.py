"""A rollout on disk: its manifest, one folder per finished shard, and the summary.

    <out>/manifest.json      what is being rolled out (mode, seed, prompts' hash, samples, shard size);
                             a resumed rollout must match it
    <out>/shards/<i:05d>/    a finished shard: trajectories.jsonl + images/ (strokes.trajectory's
                             JSONL+PNG rows), written atomically by the driver alone
    <out>/summary.json       counts, written when every shard is done

Work is the list of (prompt index, sample index) pairs in order, cut into shards of `shard_size`;
each shard decodes with its own seed derived from the rollout's seed and the shard's index, so a
shard gives the same trajectories whichever process computes it, and whenever.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from strokes.errors import InputError
from strokes.io import write_atomic
from strokes.records import PromptRecord
from strokes.trajectory import Trajectory, read_jsonl, write_jsonl

from .engine import Prompt, prompt_record, prompt_text


@dataclass
class Shard:
    index: int
    items: list[tuple[int, int]]  # (prompt index, sample index)
    prompts: list[Prompt]
    seed: int


def shard_seed(seed: int, index: int) -> int:
    return random.Random(f"rollout:{seed}:{index}").getrandbits(62)


def make_shards(prompts: Sequence[Prompt], samples: int, shard_size: int, seed: int) -> list[Shard]:
    items = [(i, k) for i in range(len(prompts)) for k in range(samples)]
    shards = []
    for n, start in enumerate(range(0, len(items), shard_size)):
        chunk = items[start: start + shard_size]
        shards.append(Shard(n, chunk, [prompts[i] for i, _ in chunk], shard_seed(seed, n)))
    return shards


def label(traj: Trajectory, shard: Shard, position: int) -> Trajectory:
    """Stamp a trajectory with the work item it answers."""
    i, k = shard.items[position]
    traj.meta["index"], traj.meta["sample"], traj.meta["shard"] = i, k, shard.index
    return traj


@dataclass
class Manifest:
    mode: str
    seed: int
    samples: int
    shard_size: int
    prompts: int
    prompts_sha256: str
    version: int = 1

    @classmethod
    def of(cls, prompts: Sequence[Prompt], mode: str, seed: int, samples: int, shard_size: int) -> "Manifest":
        blob = json.dumps([prompt_record(p) or prompt_text(p) for p in prompts], sort_keys=True)
        return cls(mode, seed, samples, shard_size, len(prompts), hashlib.sha256(blob.encode()).hexdigest())


class RolloutDir:
    """The output folder of one rollout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def shard_dir(self, index: int) -> Path:
        return self.root / "shards" / f"{index:05d}"

    def is_done(self, index: int) -> bool:
        return (self.shard_dir(index) / "trajectories.jsonl").is_file()

    def open(self, manifest: Manifest) -> None:
        """Create the folder, or check that the rollout found there is this one."""
        path = self.root / "manifest.json"
        if path.is_file():
            try:
                found = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise InputError(f"{path}: malformed JSON") from None
            for key, value in asdict(manifest).items():
                if found.get(key) != value:
                    raise InputError(f"{self.root}: holds a different rollout ({key} is {found.get(key)!r}, "
                                     f"not {value!r}); choose another output folder")
            return
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        _write_json(path, asdict(manifest))

    def write_shard(self, index: int, trajectories: list[Trajectory]) -> None:
        self.shard_dir(index).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(trajectories, self.shard_dir(index))

    def read_shard(self, index: int) -> list[Trajectory]:
        return read_jsonl(self.shard_dir(index))

    def shard_meta(self, index: int) -> list[dict]:
        """The meta of each trajectory of a finished shard, without reading its images."""
        lines = (self.shard_dir(index) / "trajectories.jsonl").read_text().splitlines()
        return [json.loads(json.loads(line)["meta"]) for line in lines if line.strip()]

    def finished(self) -> list[int]:
        base = self.root / "shards"
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and self.is_done(int(p.name)))

    def trajectories(self) -> list[Trajectory]:
        """Every trajectory of every finished shard, in work order."""
        return [t for i in self.finished() for t in self.read_shard(i)]

    def write_summary(self, summary: dict) -> None:
        _write_json(self.root / "summary.json", summary)


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def records_of(prompts: Sequence[Prompt]) -> list[PromptRecord]:
    """The prompt records (GenEval evaluation needs them); InputError when a prompt is bare text."""
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, PromptRecord):
            raise InputError(f"prompt {i}: GenEval output needs prompt records, got plain text")
        out.append(p)
    return out
