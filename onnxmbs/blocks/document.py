"""The blocks plan, schema ``onnxmbs.blocks/1``: typed records with ``to_json``/``from_json``.

    {"schema": "onnxmbs.blocks/1", "model": {path, sha256, input, shape, layout, L},
     "baseline_accuracy", "blocks": [{id, join, nodes, params, macs, removable, reason}],
     "rounds": [{round, scores: {block id: accuracy with it removed}, removed, accuracy}],
     "removed": [ids], "summary": {params, params_after, macs, macs_after, accuracy_after},
     "settings": {...}}

``settings`` (the run's options and data) is an addition to the issue's keys.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxmbs.blocks.discover import Block
from onnxmbs.errors import MBSError
from onnxmbs.files import read_document
from onnxmbs.graph.load import LoadedModel

SCHEMA = "onnxmbs.blocks/1"


@dataclass(frozen=True)
class ModelRecord:
    """The model a plan was made from — the same record as the MBS plan's ``model``."""

    path: str
    sha256: str
    input: str
    shape: tuple[int, ...]
    layout: str
    L: int  # noqa: N815 - the paper's name

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelRecord:
        i = loaded.input
        return cls(loaded.path, loaded.sha256, i.name, tuple(i.shape), i.layout, i.L)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "input": self.input, "shape": list(self.shape),
                "layout": self.layout, "L": self.L}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelRecord:
        return cls(d["path"], d["sha256"], d["input"], tuple(d["shape"]), d["layout"], int(d["L"]))


@dataclass(frozen=True)
class BlockRecord:
    id: str
    join: str
    nodes: tuple[str, ...]
    params: int
    macs: int
    removable: bool
    reason: str
    shortcut: str = ""

    @classmethod
    def of(cls, block: Block) -> BlockRecord:
        return cls(block.id, block.join, block.nodes, block.params, block.macs, block.removable, block.reason,
                   block.shortcut)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "join": self.join, "nodes": list(self.nodes), "params": self.params,
                "macs": self.macs, "removable": self.removable, "reason": self.reason, "shortcut": self.shortcut}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BlockRecord:
        return cls(d["id"], d["join"], tuple(d["nodes"]), int(d["params"]), int(d["macs"]), bool(d["removable"]),
                   d["reason"], d.get("shortcut", ""))


@dataclass(frozen=True)
class RoundRecord:
    round: int
    scores: Mapping[str, float]  # block id -> accuracy with it removed (empty after round 1 with rescore once)
    removed: str
    accuracy: float  # the model's accuracy after this round's removal

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "scores": dict(self.scores), "removed": self.removed, "accuracy": self.accuracy}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RoundRecord:
        return cls(int(d["round"]), {k: float(v) for k, v in d["scores"].items()}, d["removed"], float(d["accuracy"]))


@dataclass(frozen=True)
class Summary:
    params: int
    params_after: int
    macs: int
    macs_after: int
    accuracy_after: float

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "params_after": self.params_after, "macs": self.macs,
                "macs_after": self.macs_after, "accuracy_after": self.accuracy_after}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Summary:
        return cls(int(d["params"]), int(d["params_after"]), int(d["macs"]), int(d["macs_after"]),
                   float(d["accuracy_after"]))


@dataclass(frozen=True)
class BlocksPlan:
    model: ModelRecord
    baseline_accuracy: float
    blocks: tuple[BlockRecord, ...]
    rounds: tuple[RoundRecord, ...]
    summary: Summary
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> tuple[str, ...]:
        """Removed block ids in removal order."""
        return tuple(r.removed for r in self.rounds)

    def block(self, block_id: str) -> BlockRecord:
        for b in self.blocks:
            if b.id == block_id:
                return b
        raise MBSError(f"the blocks plan has no block {block_id!r} — was it edited by hand?")

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "model": self.model.to_json(), "baseline_accuracy": self.baseline_accuracy,
                "blocks": [b.to_json() for b in self.blocks], "rounds": [r.to_json() for r in self.rounds],
                "removed": list(self.removed), "summary": self.summary.to_json(), "settings": dict(self.settings)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BlocksPlan:
        try:
            plan = cls(ModelRecord.from_json(d["model"]), float(d["baseline_accuracy"]),
                       tuple(BlockRecord.from_json(b) for b in d["blocks"]),
                       tuple(RoundRecord.from_json(r) for r in d["rounds"]), Summary.from_json(d["summary"]),
                       dict(d.get("settings", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MBSError(f"the blocks plan is incomplete or malformed ({type(exc).__name__}: {exc}) — write it "
                           "again with `onnxmbs blocks MODEL --data ... -o blocks.json`") from None
        if list(d.get("removed", plan.removed)) != list(plan.removed):
            raise MBSError("the blocks plan's 'removed' list disagrees with its rounds — write it again with "
                           "`onnxmbs blocks`")
        return plan


def read_blocks_plan(path: str | Path) -> BlocksPlan:
    doc = read_document(path, schema=SCHEMA, what="onnxmbs blocks plan",
                        how=f"create one with `onnxmbs blocks MODEL --data LABELLED -o {path}`")
    return BlocksPlan.from_json(doc)
