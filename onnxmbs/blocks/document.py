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
from typing import Any, ClassVar

from onnxmbs.blocks.discover import Block
from onnxmbs.errors import MBSError
from onnxmbs.files import read_document
from onnxmbs.graph.record import ModelRecord
from onnxmbs.records import Record, strs

SCHEMA = "onnxmbs.blocks/1"
HOW = "write it with `onnxmbs blocks MODEL --data LABELLED -o BLOCKS.json`"

__all__ = ["SCHEMA", "BlockRecord", "BlocksPlan", "ModelRecord", "RoundRecord", "Summary", "read_blocks_plan"]


@dataclass(frozen=True)
class BlockRecord(Record):
    """One residual join: its branch nodes, cost, and whether it may be removed (and why not)."""
    id: str
    join: str
    nodes: tuple[str, ...]
    params: int
    macs: int
    removable: bool
    reason: str
    shortcut: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"nodes": strs, "params": int, "macs": int, "removable": bool}

    @classmethod
    def of(cls, block: Block) -> BlockRecord:
        return cls(block.id, block.join, block.nodes, block.params, block.macs, block.removable, block.reason,
                   block.shortcut)


def _scores(value: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in value.items()}


@dataclass(frozen=True)
class RoundRecord(Record):
    """One greedy round: accuracy with each candidate removed, the block removed, accuracy after."""
    round: int
    scores: Mapping[str, float]  # block id -> accuracy with it removed (empty after round 1 with rescore once)
    removed: str
    accuracy: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"round": int, "scores": _scores, "accuracy": float}


@dataclass(frozen=True)
class Summary(Record):
    params: int
    params_after: int
    macs: int
    macs_after: int
    accuracy_after: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"params": int, "params_after": int, "macs": int, "macs_after": int, "accuracy_after": float}


@dataclass(frozen=True)
class BlocksPlan(Record):
    """The blocks plan: ``plan.removed`` (ids in removal order), ``plan.rounds[0].scores``, ``plan.summary``."""
    schema: str
    model: ModelRecord
    baseline_accuracy: float
    blocks: tuple[BlockRecord, ...]
    rounds: tuple[RoundRecord, ...]
    removed: tuple[str, ...]
    summary: Summary
    settings: Mapping[str, Any] = field(default_factory=dict)  # the run's options and data (an addition)
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {
        "model": ModelRecord.from_json, "baseline_accuracy": float, "removed": strs, "summary": Summary.from_json,
        "blocks": lambda v: tuple(BlockRecord.from_json(x) for x in v),
        "rounds": lambda v: tuple(RoundRecord.from_json(x) for x in v), "settings": dict}

    @classmethod
    def create(cls, *, model: ModelRecord, baseline_accuracy: float, blocks: tuple[BlockRecord, ...],
               rounds: tuple[RoundRecord, ...], summary: Summary, settings: Mapping[str, Any]) -> BlocksPlan:
        return cls(SCHEMA, model, baseline_accuracy, blocks, rounds, tuple(r.removed for r in rounds), summary,
                   dict(settings))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BlocksPlan:
        """The one schema check: a blocks/1 document, or MBSError saying what is wrong."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise MBSError(f"not an onnxmbs blocks plan (schema {SCHEMA!r} expected) — {HOW}")
        try:
            plan = super().from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MBSError(f"the blocks plan is malformed ({type(exc).__name__}: {exc}) — {HOW}") from None
        if plan.removed != tuple(r.removed for r in plan.rounds):
            raise MBSError(f"the blocks plan's 'removed' list disagrees with its rounds — {HOW}")
        return plan

    def block(self, block_id: str) -> BlockRecord:
        for b in self.blocks:
            if b.id == block_id:
                return b
        raise MBSError(f"the blocks plan has no block {block_id!r} — was it edited by hand? {HOW}")


def read_blocks_plan(path: str | Path) -> BlocksPlan:
    return BlocksPlan.from_json(read_document(path, schema=SCHEMA, what="onnxmbs blocks plan",
                                              how=HOW.replace("BLOCKS.json", "{output}")))
