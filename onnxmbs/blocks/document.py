"""The blocks plan, schema ``onnxmbs.blocks/1``: typed records with ``to_json``/``from_json``.

    {"schema": "onnxmbs.blocks/1", "model": {path, sha256, input, shape, layout, L},
     "baseline_accuracy", "blocks": [{id, join, nodes, params, macs, removable, reason}],
     "rounds": [{round, scores: {block id: accuracy with it removed}, removed, accuracy}],
     "removed": [ids], "summary": {params, params_after, macs, macs_after, accuracy_after},
     "settings": {...}}

``settings`` (the run's options and data, :class:`BlocksSettings`) is an addition to the issue's keys.
Reading checks every field and names a bad one in one line.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from onnxmbs.blocks.discover import Block
from onnxmbs.data.normalisation import Normalisation
from onnxmbs.errors import MBSError
from onnxmbs.files import read_document
from onnxmbs.graph.record import ModelRecord
from onnxmbs.records import (FieldError, Record, boolean, choice, damaged, integer, items, mapping, number,
                             optional, text, wrong)
from onnxmbs.stats.source import NORMALISATION

SCHEMA = "onnxmbs.blocks/1"
HOW = "write it with `onnxmbs blocks MODEL --data IMAGES -o BLOCKS.json`"
REWRITE = "re" + HOW  # a file that is damaged
RESCORE = ("every", "once", "refit")
FRACTION = number(low=0, high=1)
FRACTION_FLOAT = number(low=0, high=1, as_float=True)

__all__ = ["SCHEMA", "BlockRecord", "BlocksPlan", "BlocksSettings", "ModelRecord", "RoundRecord", "Summary",
           "read_blocks_plan"]


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
    NAME: ClassVar = "block"
    CONVERT: ClassVar = {"id": text, "join": text, "nodes": items(text), "params": integer(), "macs": integer(),
                         "removable": boolean, "reason": text, "shortcut": text}

    @classmethod
    def of(cls, block: Block) -> BlockRecord:
        return cls(block.id, block.join, block.nodes, block.params, block.macs, block.removable, block.reason,
                   block.shortcut)


@dataclass(frozen=True)
class RoundRecord(Record):
    """One greedy round: accuracy with each candidate removed, the block removed, accuracy after."""
    round: int
    scores: Mapping[str, float]  # block id -> accuracy with it removed (empty after round 1 with rescore once)
    removed: str
    accuracy: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "round"
    CONVERT: ClassVar = {"round": integer(low=1), "scores": mapping(number(low=0, high=1, as_float=True)),
                         "removed": text, "accuracy": number(low=0, high=1, as_float=True)}


@dataclass(frozen=True)
class Summary(Record):
    params: int
    params_after: int
    macs: int
    macs_after: int
    accuracy_after: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"params": integer(), "params_after": integer(), "macs": integer(), "macs_after": integer(),
                         "accuracy_after": number(low=0, high=1, as_float=True)}


@dataclass(frozen=True)
class BlocksSettings(Record):
    """How the blocks were scored: ``rescore``, the stop rule, the labelled images and their normalisation."""
    rescore: str  # "every" | "once"
    remove: int | None  # the stop rule (at least one is set)
    max_accuracy_drop: float | None
    target_param_reduction: float | None
    target_flop_reduction: float | None
    images: int
    data: str | None
    provider: str
    preprocess: str | None = None  # the normalisation's name, when it was decided
    normalisation: Normalisation | None = None
    metric: str = "top-1"  # what the scores are: top-1, fidelity (to the original) or python:FILE.py:FUNCTION
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "settings"
    CONVERT: ClassVar = {"rescore": choice(*RESCORE), "remove": optional(integer(low=1)),
                         "max_accuracy_drop": optional(FRACTION), "target_param_reduction": optional(FRACTION),
                         "target_flop_reduction": optional(FRACTION), "images": integer(),
                         "data": optional(text), "provider": text, "preprocess": optional(text),
                         "normalisation": optional(NORMALISATION), "metric": text}
    OMIT_NONE: ClassVar = frozenset({"preprocess", "normalisation"})


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
    settings: BlocksSettings | None = None  # the run's options and data (an addition: older files have none)
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "blocks plan"
    CONVERT: ClassVar = {
        "schema": text, "model": ModelRecord.from_json, "baseline_accuracy": FRACTION_FLOAT,
        "removed": items(text), "summary": Summary.from_json, "blocks": items(BlockRecord.from_json),
        "rounds": items(RoundRecord.from_json), "settings": optional(BlocksSettings.from_json)}
    OMIT_NONE: ClassVar = frozenset({"settings"})

    @classmethod
    def create(cls, *, model: ModelRecord, baseline_accuracy: float, blocks: tuple[BlockRecord, ...],
               rounds: tuple[RoundRecord, ...], summary: Summary, settings: BlocksSettings | None) -> BlocksPlan:
        return cls(SCHEMA, model, baseline_accuracy, blocks, rounds, tuple(r.removed for r in rounds), summary,
                   settings)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, path: str | Path | None = None) -> BlocksPlan:
        """The one schema check: a blocks/1 document, or one MBSError line naming the bad field (and ``path``)."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise MBSError(f"not an onnxmbs blocks plan (schema {SCHEMA!r} expected) — {HOW}")
        try:
            plan = super().from_json(data)
        except FieldError as exc:
            raise damaged(exc, path=path, how=REWRITE) from None
        if plan.removed != tuple(r.removed for r in plan.rounds):
            raise damaged(wrong("the blocks of its rounds, in order", list(plan.removed), path=("removed",),
                                record=cls.NAME), path=path, how=REWRITE)
        return plan

    def block(self, block_id: str) -> BlockRecord:
        for b in self.blocks:
            if b.id == block_id:
                return b
        raise MBSError(f"the blocks plan has no block {block_id!r} — was it edited by hand? {HOW}")


def read_blocks_plan(path: str | Path) -> BlocksPlan:
    """Read and check a blocks plan written by ``onnxmbs blocks``."""
    return BlocksPlan.from_json(read_document(path, schema=SCHEMA, what="onnxmbs blocks plan",
                                              how=HOW.replace("BLOCKS.json", "{output}")), path=path)
