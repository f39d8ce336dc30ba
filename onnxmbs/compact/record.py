"""The compact model's record ``<output>.json`` (schema ``onnxmbs.compact/1``) as typed, frozen records.

:meth:`onnxmbs.compact.CompactResult.record` makes it, :func:`read_compact_record` reads it back
with every field checked (light: no onnx import).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from onnxmbs.data.normalisation import Normalisation
from onnxmbs.errors import MBSError
from onnxmbs.files import read_document
from onnxmbs.records import (FieldError, Record, choice, damaged, integer, items, json_object, number, optional,
                             text, wrong)
from onnxmbs.stats.source import NORMALISATION

SCHEMA = "onnxmbs.compact/1"
REWRITE = "rewrite it with `onnxmbs compact MODEL --plan PLAN.json -o COMPACT.onnx`"
WEIGHTS = ("inherit", "random")
SELECTED_BY = ("all", "nonzero", "l1", "greedy")  # how a group's kept channels were chosen
MS = number(low=0)


@dataclass(frozen=True)
class LatencyRecord(Record):
    """Median latency of original and compact in onnxruntime (ms), rounded as written."""
    provider: str
    batch: int
    repeats: int
    threads: int
    original_ms: float
    compact_ms: float
    speedup: float  # NaN when the compact time rounds to 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "latency"
    CONVERT: ClassVar = {"provider": text, "batch": integer(low=1), "repeats": integer(), "threads": integer(),
                         "original_ms": MS, "compact_ms": MS, "speedup": number()}

    @classmethod
    def of(cls, latency: Any) -> LatencyRecord:
        """The record of an :class:`onnxmbs.compact.check.Latency`."""
        return cls(latency.provider, latency.batch, latency.repeats, latency.threads, round(latency.original_ms, 4),
                   round(latency.compact_ms, 4), round(latency.speedup, 4))


@dataclass(frozen=True)
class KeptGroup(Record):
    """A channel group the compact model cut: its width before and after, and which channels it kept."""
    id: int
    channels: int
    compact_channels: int
    selected_by: str
    kept: tuple[int, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "group"
    CONVERT: ClassVar = {"id": integer(), "channels": integer(low=1), "compact_channels": integer(low=1),
                         "selected_by": choice(*SELECTED_BY), "kept": items(integer())}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeptGroup:
        group = super().from_json(data)
        if len(group.kept) != group.compact_channels or any(c >= group.channels for c in group.kept):
            raise wrong(f"{{compact_channels}} = {group.compact_channels} channel indices, each below {{channels}} = "
                        f"{group.channels}", list(group.kept), path=("kept",),
                        refs={"compact_channels": ("compact_channels",), "channels": ("channels",)})
        return group


@dataclass(frozen=True)
class CompactRecord(Record):
    """``record.params_compact``, ``record.latency.speedup``, ``record.groups[0].kept``, ``record.normalisation``."""
    schema: str
    weights: str
    select: str
    params: int  # the plan's count of the original
    params_predicted: int  # the plan's summary.params_compact
    params_compact: int  # counted on the compact model
    flops: int
    flops_compact: int
    bytes_original: int
    bytes_compact: int
    latency: LatencyRecord | None  # null when not measured
    inexact: tuple[str, ...]  # grouped convs whose inherited weights are approximate
    copies: tuple[str, ...]  # shared parameter tensors written more than once
    groups: tuple[KeptGroup, ...]  # only the groups that were cut
    normalisation: Normalisation | None = None  # how the images of --data / --eval-data were normalised
    reconstruction: Mapping[str, Any] | None = None  # --reconstruct: what was re-fitted (Reconstruction.to_json)
    accuracy: Mapping[str, Any] | None = None  # --eval-data: top-1 of both (AccuracyCheck.to_json)
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "compact record"
    CONVERT: ClassVar = {
        "schema": text, "weights": choice(*WEIGHTS), "select": choice(*SELECTED_BY[1:]), "params": integer(),
        "params_predicted": integer(), "params_compact": integer(), "flops": integer(), "flops_compact": integer(),
        "bytes_original": integer(), "bytes_compact": integer(), "latency": optional(LatencyRecord.from_json),
        "inexact": items(text), "copies": items(text), "groups": items(KeptGroup.from_json),
        "normalisation": optional(NORMALISATION), "reconstruction": optional(json_object),
        "accuracy": optional(json_object)}
    OMIT_NONE: ClassVar = frozenset({"normalisation", "reconstruction", "accuracy"})

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, path: str | Path | None = None) -> CompactRecord:
        """The one schema check: a compact/1 record, or one MBSError line naming the bad field (and ``path``)."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise MBSError(f"not an onnxmbs compact record (schema {SCHEMA!r} expected) — {REWRITE}")
        try:
            return super().from_json(data)
        except FieldError as exc:
            raise damaged(exc, path=path, how=REWRITE) from None


def read_compact_record(path: str | Path) -> CompactRecord:
    """Read and check the record ``<compact>.onnx.json`` that ``onnxmbs compact`` writes beside the model."""
    return CompactRecord.from_json(read_document(path, schema=SCHEMA, what="onnxmbs compact record", how=REWRITE),
                                   path=path)
