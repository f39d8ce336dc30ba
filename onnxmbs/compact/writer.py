"""The compact ONNX model: channel surgery that follows a plan (``onnxmbs compact``).

Each channel group of the plan keeps ``compact_channels`` of its channels (which ones:
:mod:`onnxmbs.compact.select`); every tensor learns which original channels its compact
version carries (:mod:`onnxmbs.compact.index`); every constant a node reads is cut along
those channels (:mod:`onnxmbs.compact.surgery`) and written into a copy of the model
(:mod:`onnxmbs.compact.graph`). The result is checked with ``onnx.checker`` (full check),
run in onnxruntime with the original's output shapes, and counted: its parameter count
must equal the plan's ``summary.params_compact`` (plus any copies of shared tensors, which
are reported), or nothing is returned. With ``weights="inherit"`` and a plan that keeps
every channel the compact model computes exactly what the original does.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxmbs.graph.analysis import Analysis, analyze
from onnxmbs.compact.accuracy import AccuracyCheck, FidelityCheck, check_quality
from onnxmbs.compact.check import Latency, measure_latency, verify
from onnxmbs.compact.graph import Rebuilt, forwarded_constants, rebuild
from onnxmbs.compact.index import Layout, compact_shape, identity_layouts, tensor_layouts
from onnxmbs.compact.ranking import greedy_scores
from onnxmbs.compact.record import SCHEMA as COMPACT_SCHEMA, CompactRecord, KeptGroup, LatencyRecord
from onnxmbs.compact.reconstruct import Reconstruction, ReconstructOptions, reconstruct as refit
from onnxmbs.compact.select import SELECT, Selection, select_channels
from onnxmbs.compact.surgery import Ctx, Edits, reinitialise, surgery_rule
from onnxmbs.graph.costs import param_tensors
from onnxmbs.errors import MBSError
from onnxmbs.files import EXTERNAL_OVER, write_json, write_onnx
from onnxmbs.planning.document import PlanDocument, as_plan
from onnxmbs.stats.measure import CalibrationOptions
from onnxmbs.data.normalisation import Normalisation
from onnxmbs.graph.load import load_model
from onnxmbs.graph.proto import external_locations, node_names

logger = logging.getLogger(__name__)

WEIGHTS = ("inherit", "random")


@dataclass(frozen=True)
class CompactResult:
    model: onnx.ModelProto = field(repr=False)
    params: int  # the plan's count of the original
    params_predicted: int  # the plan's summary.params_compact
    params_compact: int  # counted on the compact model
    flops: int  # MACs per image, original (counted)
    flops_compact: int
    bytes_original: int
    bytes_compact: int
    widths: Mapping[int, tuple[int, int]] = field(repr=False)  # group id -> (channels, kept)
    kept: Mapping[int, tuple[int, ...]] = field(repr=False)  # group id -> kept channel indices (cut groups)
    selection: Mapping[int, str] = field(repr=False)  # group id -> "all" | "nonzero" | "l1"
    inexact: tuple[str, ...]  # grouped convs whose inherited weights are approximate
    copies: tuple[str, ...]  # shared parameter tensors written more than once
    weights: str
    select: str
    latency: Latency | None = None
    reconstruction: Reconstruction | None = None
    accuracy: AccuracyCheck | None = None  # --eval-data with labels
    fidelity: FidelityCheck | None = None  # --eval-data without labels: outputs vs the original's
    external_data: bool = False  # the original keeps its weights in external-data files (so will the output)
    normalisation: Normalisation | None = None  # how the images of --data / --eval-data were normalised
    deployment: Any = None  # onnxmbs.compact.deploy.Deployment: the INT8 model written beside it (--quantize)
    original: Mapping[str, str] | None = None  # the model it was made from: path and sha256

    def record(self) -> CompactRecord:
        """The JSON sidecar: counts, sizes, latency, the kept channels of every cut group (and the reconstruction)."""
        return CompactRecord(
            schema=COMPACT_SCHEMA, weights=self.weights, select=self.select, params=self.params,
            params_predicted=self.params_predicted, params_compact=self.params_compact, flops=self.flops,
            flops_compact=self.flops_compact, bytes_original=self.bytes_original, bytes_compact=self.bytes_compact,
            latency=None if self.latency is None else LatencyRecord.of(self.latency),
            inexact=tuple(self.inexact), copies=tuple(self.copies),
            groups=tuple(KeptGroup(g, c, k, self.selection[g], tuple(self.kept[g]))
                         for g, (c, k) in self.widths.items() if k < c),
            normalisation=self.normalisation,
            reconstruction=None if self.reconstruction is None else self.reconstruction.to_json(),
            accuracy=None if self.accuracy is None else self.accuracy.to_json(), original=self.original,
            fidelity=None if self.fidelity is None else self.fidelity.to_json())


def _source(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, bytes, int, bool]:
    """The proto, its bytes with all weights inside (for onnxruntime), every byte of the model on disk
    (the .onnx file and its external-data files) and whether it has external data."""
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        return model, data, len(data), False
    path = Path(model)
    if not path.is_file():
        raise MBSError(f"model file not found: {path} — check the path")
    proto = onnx.load(str(path), load_external_data=False)
    files = [path.parent / name for name in external_locations(proto.graph)]
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError) as exc:
        raise MBSError(f"cannot read the external data of {path} ({exc}) — keep its data files next to it") from None
    size = path.stat().st_size + sum(f.stat().st_size for f in files)
    return proto, proto.SerializeToString(), size, bool(files)


def save_model(proto: onnx.ModelProto, output: str | Path, *, external: bool = False) -> int:
    """Write ``proto`` atomically (:func:`onnxmbs.files.write_onnx`); with ``external`` its weights go to
    ``<output>.data`` beside it. Returns every byte written."""
    return write_onnx(output, proto, external=external or proto.ByteSize() > EXTERNAL_OVER)


def _input_shape(plan: PlanDocument, given: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if given is not None:
        return tuple(given)
    shape = plan.model.shape
    return tuple(int(d) for d in shape[1:]) if len(shape) == 4 else None


def check_plan(plan: PlanDocument, analysis: Analysis, *, force: bool = False) -> dict[int, int]:
    """The compact width of every group, after checking the plan belongs to this model."""
    digest = plan.model.sha256
    if digest != analysis.loaded.sha256 and not force:
        raise MBSError(f"the plan was made for another model file (sha256 {str(digest)[:12]}…, this model "
                       f"{analysis.loaded.sha256[:12]}…) — re-run `onnxmbs plan` on this model, or pass --force")
    entries = {g.id: g for g in plan.groups}
    if set(entries) != {g.id for g in analysis.channels.groups}:
        raise MBSError(f"the plan's groups do not match this model ({len(entries)} groups in the plan, "
                       f"{len(analysis.channels.groups)} in the model) — re-run `onnxmbs plan` on this model")
    for g in analysis.channels.groups:
        _check_group(g, entries[g.id].channels, entries[g.id].compact_channels)
    return {g.id: entries[g.id].compact_channels for g in analysis.channels.groups}


def _check_group(g, planned: int, width: int) -> None:
    if planned != g.channels:
        raise MBSError(f"plan group {g.id} has {planned} channels, this model's has {g.channels} — "
                       "re-run `onnxmbs plan` on this model")
    if not 1 <= width <= g.channels:
        raise MBSError(f"plan group {g.id} keeps {width} of {g.channels} channels — give 1..{g.channels}")
    if g.frozen and width != g.channels:
        raise MBSError(f"plan group {g.id} is frozen ({g.frozen}) but the plan cuts it to {width} channels — "
                       "keep its compact_channels at its channels")
    if width < g.channels and width % g.multiple_of:
        raise MBSError(f"plan group {g.id} keeps {width} channels, not a multiple of {g.multiple_of} that its "
                       f"grouped convs / channel shuffle need (producers {', '.join(g.producers[:3])}) — "
                       f"re-plan with --round-to {g.multiple_of}")


def _surgery(analysis: Analysis, layouts, *, weights: str, seed: int) -> tuple[Edits, Ctx, dict[str, str]]:
    graph = analysis.loaded.graph
    consts = dict(analysis.loaded.constants)
    fwd = forwarded_constants(graph, consts)
    for out, src in fwd.items():
        consts[out] = consts[src]
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    opset = next((o.version for o in analysis.loaded.model.opset_import if o.domain in ("", "ai.onnx")), 17)
    ctx = Ctx(layouts=layouts, consts=consts, shapes=analysis.loaded.shapes, producer=producer,
              nodes=list(graph.node), opset=opset, static=analysis.loaded.static_values)
    edits = Edits()
    for i, (node, name) in enumerate(zip(graph.node, node_names(graph))):
        rule = surgery_rule(node.op_type)
        if rule is not None:
            rule(i, node, name, ctx, edits)
    if weights == "random":
        reinitialise(ctx, edits, seed=seed)
    return edits, ctx, fwd


def _options(weights: str, select: str, reconstruct: ReconstructOptions | None) -> None:
    if weights not in WEIGHTS:
        raise MBSError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)} — use inherit or random")
    if select not in SELECT:
        raise MBSError(f"select={select!r} is not one of {', '.join(SELECT)} — use {', '.join(SELECT)}")
    if reconstruct is not None and weights != "inherit":
        raise MBSError("reconstruction starts from the inherited weights — use weights='inherit' with it")


def _build(analysis: Analysis, proto: onnx.ModelProto, plan: PlanDocument, widths: Mapping[int, int], *,
           weights: str, select: str, seed: int, scores: Mapping[int, np.ndarray] | None = None) -> _Built:
    ids = identity_layouts(analysis)
    chosen = select_channels(analysis, plan, widths, ids, select=select, scores=scores)
    layouts = tensor_layouts(analysis, chosen.keep)
    edits, ctx, fwd = _surgery(analysis, layouts, weights=weights, seed=seed)
    params = param_tensors(analysis.loaded.graph, ctx.consts)
    shapes = analysis.loaded.shapes
    expected = {t: compact_shape(lay, shapes[t]) for t, lay in layouts.items()
                if len(shapes.get(t, ())) > lay.axis + (lay.dims is not None)}
    return _Built(rebuild(proto, edits, ctx.consts, fwd, params), chosen, sorted(set(edits.inexact)), expected,
                  layouts, ctx.consts)


@dataclass(frozen=True)
class _Built:
    rebuilt: Rebuilt
    chosen: Selection
    inexact: list[str]
    expected: dict
    layouts: Mapping[str, Layout]
    consts: Mapping[str, np.ndarray]


def compact_model(model: str | Path | onnx.ModelProto, plan: PlanDocument | str | Path | Mapping[str, Any], *,
                  weights: str = "inherit", select: str = "nonzero", input_shape: tuple[int, ...] | None = None,
                  force: bool = False, seed: int = 0, latency_repeats: int = 0, threads: int = 1,
                  reconstruct: ReconstructOptions | None = None, data: CalibrationOptions | None = None,
                  evaluation: CalibrationOptions | None = None, classes: Any = None) -> CompactResult:
    """The compact model of ``model`` under ``plan``, verified; ``model`` itself is never modified.

    ``reconstruct``: re-fit the layers behind every cut to the original's outputs on its data
    (:mod:`onnxmbs.compact.reconstruct`). ``select="greedy"`` ranks channels on ``data``
    (default: the reconstruction's data). ``evaluation``: labelled images (``classes``: their class
    folder names in index order) on which the accuracy of original and compact is measured.
    """
    _options(weights, select, reconstruct)
    doc = as_plan(plan)
    proto, data_bytes, size, external = _source(model)
    analysis = analyze(model, input_shape=_input_shape(doc, input_shape))
    widths = check_plan(doc, analysis, force=force)
    scores = None
    if select == "greedy":
        scores = greedy_scores(analysis, proto, widths, _selection_data(data, reconstruct), seed=seed)
    parts = _build(analysis, proto, doc, widths, weights=weights, select=select, seed=seed, scores=scores)
    built, rebuilt = parts.rebuilt, None
    if reconstruct is not None:
        rebuilt = refit(analysis, parts.layouts, parts.consts, proto, built.model, reconstruct)
        built = Rebuilt(model=rebuilt.model, copies=built.copies, extra_params=built.extra_params)
    if parts.inexact and weights == "inherit" and rebuilt is None:
        logger.warning("inherited weights of %d grouped conv(s) are approximate (kept channels cross their "
                       "groups): %s — retrain or fine-tune", len(parts.inexact), ", ".join(parts.inexact[:5]))
    costs, predicted = _verified(analysis, built, data_bytes, doc, parts.expected, widths)
    loaded = analysis.loaded
    quality = check_quality(analysis, built.model, evaluation, classes=classes) if evaluation else None
    accuracy = quality if isinstance(quality, AccuracyCheck) else None
    fid = quality if isinstance(quality, FidelityCheck) else None
    latency = (measure_latency(data_bytes, built.model.SerializeToString(), loaded.input, batch=loaded.input.shape[0],
                               repeats=latency_repeats, threads=threads) if latency_repeats > 0 else None)
    return CompactResult(
        model=built.model, params=doc.summary.params, params_predicted=predicted,
        params_compact=costs.params, flops=analysis.shapes.flops, flops_compact=costs.flops,
        bytes_original=size, bytes_compact=built.model.ByteSize(), external_data=external,
        widths={g.id: (g.channels, widths[g.id]) for g in analysis.channels.groups},
        kept={g: tuple(int(c) for c in np.asarray(k)) for g, k in parts.chosen.keep.items()},
        selection=dict(parts.chosen.source), inexact=tuple(parts.inexact), copies=built.copies, weights=weights,
        select=select, latency=latency, reconstruction=rebuilt, accuracy=accuracy, fidelity=fid,
        normalisation=_normalisation(loaded, data, reconstruct, evaluation),
        original={"path": str(loaded.path), "sha256": loaded.sha256})


def _normalisation(loaded: Any, *options: Any) -> Normalisation | None:
    """The normalisation every image read for this compact model got (one rule, so one answer)."""
    for opts in options:
        if isinstance(opts, ReconstructOptions):
            opts = opts.data
        if opts is not None:
            return opts.normalisation(loaded)
    return None


def _selection_data(data: CalibrationOptions | None, reconstruct: ReconstructOptions | None) -> CalibrationOptions:
    if data is not None:
        return data
    if reconstruct is not None:
        return reconstruct.data
    raise MBSError("select='greedy' ranks channels on calibration images — pass data (--data PATH)")


def _verified(analysis: Analysis, built: Rebuilt, data_bytes: bytes, doc: PlanDocument,
              expected: Mapping[str, tuple[int, ...]], widths: Mapping[int, int]):
    loaded = analysis.loaded
    batch = 2 if loaded.batch_dynamic else loaded.input.shape[0]
    costs = verify(built.model, data_bytes, loaded.input, batch=batch, input_shape=loaded.input.shape,
                   expected=expected)
    predicted = doc.summary.params_compact
    if costs.params != predicted and not _explained(costs.params, predicted, built.extra_params, analysis, widths):
        raise MBSError(f"the compact model has {costs.params:,} parameters, the plan predicted {predicted:,}"
                       f"{f' ({built.extra_params:,} in copied shared tensors)' if built.extra_params else ''} — "
                       "nothing was written; re-run `onnxmbs plan` on this model, or report it")
    return costs, predicted


def _explained(counted: int, predicted: int, extra: int, analysis: Analysis, widths: Mapping[int, int]) -> bool:
    """A count off the plan's only through shared tensors: a plan that predates copies (counted them once), or
    cuts of a shared tensor that came out equal (the plan counted them apart)."""
    from onnxmbs.planning.planner import compact_params
    from onnxmbs.planning.scaling import param_specs

    specs = param_specs(analysis)
    once = sum(p.compact_size(widths) for p in specs if p.is_param and not p.copy)
    return counted - extra == once and predicted in (once, compact_params(specs, widths))


def sidecar_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".json")


def write_compact(model: str | Path | onnx.ModelProto, plan: PlanDocument | str | Path | Mapping[str, Any],
                  output: str | Path, *,
                  weights: str = "inherit", select: str = "nonzero", input_shape: tuple[int, ...] | None = None,
                  force: bool = False, seed: int = 0, latency_repeats: int = 5, threads: int = 1,
                  sidecar: bool = True, reconstruct: ReconstructOptions | None = None,
                  data: CalibrationOptions | None = None, evaluation: CalibrationOptions | None = None,
                  classes: Any = None, quantize: Any = None) -> CompactResult:
    """:func:`compact_model`, then write the ONNX file (and ``<output>.json``) atomically.

    ``quantize`` (:class:`onnxmbs.compact.quantize.QuantizeOptions`): also write the INT8 model
    ``<output stem>.int8.onnx`` and its record (:mod:`onnxmbs.compact.deploy`)."""
    result = compact_model(model, plan, weights=weights, select=select, input_shape=input_shape, force=force,
                           seed=seed, latency_repeats=latency_repeats, threads=threads, reconstruct=reconstruct,
                           data=data, evaluation=evaluation, classes=classes)
    deployment = None
    if quantize is not None:  # measured and checked before anything is written
        deployment = _int8(model, plan, result, output, quantize, input_shape=input_shape, evaluation=evaluation,
                           classes=classes, repeats=latency_repeats, threads=threads)
    result = replace(result, bytes_compact=save_model(result.model, output, external=result.external_data))
    if sidecar:
        write_json(sidecar_path(output), result.record())
    if deployment is not None:
        result = replace(result, deployment=deployment.write(compact_bytes=result.bytes_compact))
    logger.info("wrote %s (%d parameters)", output, result.params_compact)
    return result


def _int8(model: Any, plan: Any, result: CompactResult, output: str | Path, quantize: Any, *,
          input_shape: tuple[int, ...] | None, evaluation: CalibrationOptions | None, classes: Any, repeats: int,
          threads: int) -> Any:
    from onnxmbs.compact.deploy import measure_int8
    from onnxmbs.compact.record import int8_path

    _, data_bytes, size, _ = _source(model)
    loaded = load_model(model, input_shape=_input_shape(as_plan(plan), input_shape))
    return measure_int8(loaded, result.model, int8_path(output), quantize, original_bytes=data_bytes,
                        compact_path=output, original_size=size, evaluation=evaluation, classes=classes,
                        repeats=repeats, threads=threads)


__all__ = ["CalibrationOptions", "CompactResult", "Latency", "ReconstructOptions", "check_plan", "compact_model", "sidecar_path", "write_compact", "WEIGHTS",
           "SELECT"]
