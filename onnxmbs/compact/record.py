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
from onnxmbs.records import (FieldError, Record, choice, damaged, integer, items, json_object, mapping, number, optional,
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
    original: Mapping[str, Any] | None = None  # the model it was made from: {"path", "sha256"}
    fidelity: Mapping[str, Any] | None = None  # --eval-data without labels: {data, images, outputs} vs the original
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "compact record"
    CONVERT: ClassVar = {
        "schema": text, "weights": choice(*WEIGHTS), "select": choice(*SELECTED_BY[1:]), "params": integer(),
        "params_predicted": integer(), "params_compact": integer(), "flops": integer(), "flops_compact": integer(),
        "bytes_original": integer(), "bytes_compact": integer(), "latency": optional(LatencyRecord.from_json),
        "inexact": items(text), "copies": items(text), "groups": items(KeptGroup.from_json),
        "normalisation": optional(NORMALISATION), "reconstruction": optional(json_object),
        "accuracy": optional(json_object), "original": optional(json_object), "fidelity": optional(json_object)}
    OMIT_NONE: ClassVar = frozenset({"normalisation", "reconstruction", "accuracy", "original", "fidelity"})

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


INT8_SCHEMA = "onnxmbs.int8/1"
REWRITE_INT8 = "rewrite it with `onnxmbs compact MODEL --plan PLAN.json -o COMPACT.onnx --quantize int8 --data D`"
VARIANTS = ("original", "compact", "int8")


@dataclass(frozen=True)
class Int8Record(Record):
    """The INT8 model's record ``<compact>.int8.onnx.json`` (:mod:`onnxmbs.compact.deploy` writes it)."""
    schema: str
    made_by: str
    model: str
    source: str  # the compact fp32 file it was quantized from
    quantization: Mapping[str, Any]
    normalisation: Normalisation | None
    bytes: Mapping[str, int]  # per variant
    latency: Mapping[str, Any]  # provider, batch, repeats, threads and <variant>_ms from one run
    accuracy: Mapping[str, Any] | None = None  # per variant (Accuracy.to_json), with labels
    fidelity: Mapping[str, Any] | None = None  # compact / int8 vs original (Fidelity.to_json), without
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "INT8 record"
    CONVERT: ClassVar = {"schema": text, "made_by": text, "model": text, "source": text, "quantization": json_object,
                         "normalisation": optional(NORMALISATION), "bytes": mapping(integer()),
                         "latency": json_object, "accuracy": optional(mapping(json_object)),
                         "fidelity": optional(json_object)}
    OMIT_NONE: ClassVar = frozenset({"accuracy", "fidelity"})


def int8_path(output: str | Path) -> Path:
    """Where the INT8 model of compact output ``c.onnx`` goes: ``c.int8.onnx`` beside it."""
    output = Path(output)
    stem = output.name[:-5] if output.name.lower().endswith(".onnx") else output.name
    return output.with_name(f"{stem}.int8.onnx")


def read_int8_record(path: str | Path) -> Int8Record:
    doc = read_document(path, schema=INT8_SCHEMA, what="onnxmbs INT8 record", how=REWRITE_INT8)
    try:
        return Int8Record.from_json(doc)
    except FieldError as exc:
        raise damaged(exc, path=path, how=REWRITE_INT8) from None


@dataclass(frozen=True)
class DeploymentRow(Record):
    """One variant of the deployment table; None where it was not measured."""
    variant: str  # original | compact | int8
    params: int
    flops: int  # MACs per image
    bytes: int | None
    latency_ms: float | None
    top1: float | None = None  # with labels
    agreement: float | None = None  # share of images whose top-1 equals the original's
    relative_l2: float | None = None  # without labels: worst output's ||y - y_ref|| / ||y_ref||
    cosine: float | None = None  # without labels: worst output's cosine to the original's
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"variant": choice(*VARIANTS), "params": integer(), "flops": integer(),
                         "bytes": optional(integer()), "latency_ms": optional(MS), "top1": optional(number()),
                         "agreement": optional(number()), "relative_l2": optional(number()),
                         "cosine": optional(number())}


@dataclass(frozen=True)
class DeploymentTable(Record):
    """Original, compact and (with ``--quantize``) compact INT8 of one ``onnxmbs compact`` output, from its
    records: params, MACs, file size, latency (one run, ``timing``), accuracy or fidelity."""
    compact: str  # the compact ONNX file
    model: str | None  # the original it was made from (records before 0.x do not say)
    sha256: str | None
    timing: Mapping[str, Any]  # provider, batch, repeats, threads of the latencies
    quality: str | None  # "accuracy" (labels), "fidelity" (outputs vs the original's) or None
    rows: tuple[DeploymentRow, ...]
    quality_data: str | None = None  # the images the accuracy or fidelity was measured on
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "deployment table"
    CONVERT: ClassVar = {"compact": text, "model": optional(text), "sha256": optional(text), "timing": json_object,
                         "quality": optional(choice("accuracy", "fidelity")), "rows": items(DeploymentRow.from_json),
                         "quality_data": optional(text)}


def read_deployment(compact: str | Path) -> DeploymentTable:
    """The deployment table of compact output ``compact`` (``c.onnx``): its record ``c.onnx.json`` and,
    when ``--quantize int8`` wrote one, ``c.int8.onnx.json``. The latencies and quality come from the
    INT8 record when there is one (all three timed in one run), else from the compact record."""
    compact = Path(compact)
    record_path = compact if compact.name.endswith(".json") else compact.with_name(compact.name + ".json")
    if not record_path.is_file():
        raise MBSError(f"no compact record {record_path} — give the -o file of `onnxmbs compact` (its record is "
                       "written beside it)")
    record = read_compact_record(record_path)
    onnx_path = record_path.with_name(record_path.name[:-5])
    int8_record = Path(f"{int8_path(onnx_path)}.json")
    int8 = read_int8_record(int8_record) if int8_record.is_file() else None
    original = record.original or {}
    return DeploymentTable(compact=str(onnx_path), model=original.get("path"), sha256=original.get("sha256"),
                           timing=_timing(record, int8), quality=_quality_kind(record, int8),
                           rows=_rows(record, int8), quality_data=_quality_data(record, int8))


def _timing(record: CompactRecord, int8: Int8Record | None) -> dict[str, Any]:
    if int8 is not None:
        return {k: v for k, v in int8.latency.items() if not k.endswith("_ms")}
    lat = record.latency
    return {} if lat is None else {"provider": lat.provider, "batch": lat.batch, "repeats": lat.repeats,
                                   "threads": lat.threads}


def _quality_data(record: CompactRecord, int8: Int8Record | None) -> str | None:
    for doc in ((int8.accuracy or int8.fidelity) if int8 is not None else None, record.accuracy, record.fidelity):
        if doc and isinstance(doc.get("data"), str):
            return doc["data"]
    return None


def _quality_kind(record: CompactRecord, int8: Int8Record | None) -> str | None:
    if int8 is not None:
        return "accuracy" if int8.accuracy else "fidelity" if int8.fidelity else None
    return "accuracy" if record.accuracy else "fidelity" if record.fidelity else None


def _rows(record: CompactRecord, int8: Int8Record | None) -> tuple[DeploymentRow, ...]:
    sizes = {"original": record.bytes_original, "compact": record.bytes_compact, **(int8.bytes if int8 else {})}
    if int8 is not None:
        times = {v: int8.latency.get(f"{v}_ms") for v in VARIANTS}
    elif record.latency is not None:
        times = {"original": record.latency.original_ms, "compact": record.latency.compact_ms}
    else:
        times = {}
    accuracy = (int8.accuracy if int8 is not None and int8.accuracy else record.accuracy) or {}
    fidelity = (int8.fidelity if int8 is not None else None) or ({"compact": record.fidelity}
                                                                 if record.fidelity else {})
    counts = {"original": (record.params, record.flops), "compact": (record.params_compact, record.flops_compact),
              "int8": (record.params_compact, record.flops_compact)}
    return tuple(DeploymentRow(variant=v, params=counts[v][0], flops=counts[v][1], bytes=sizes.get(v),
                               latency_ms=times.get(v), **_quality(accuracy.get(v), fidelity.get(v)))
                 for v in VARIANTS if v != "int8" or int8 is not None)


def _quality(accuracy: Mapping[str, Any] | None, fidelity: Mapping[str, Any] | None) -> dict[str, Any]:
    if accuracy:
        return {"top1": accuracy.get("top1"), "agreement": accuracy.get("agreement")}
    outputs = (fidelity or {}).get("outputs") or ()
    if not outputs:
        return {}
    return {"relative_l2": max(o["relative_l2"] for o in outputs), "cosine": min(o["cosine"] for o in outputs)}
