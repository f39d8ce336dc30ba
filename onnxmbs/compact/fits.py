"""Reconstruction, part 4 — which layers to re-fit, in which order, against which target.

A tensor of the compact model is *cut* when it carries fewer channels than the original,
and *off* when its kept channels no longer hold the original's values. A layer that sums
over a cut tensor's channels (Conv, Gemm, MatMul — not a depthwise conv) makes its output
off; every op downstream of an off tensor is off too. Every Conv/Gemm/MatMul that reads a
cut tensor or an off one is re-fitted (the consumers of the cut groups, and the layers
behind them that inherit their error); a layer whose weights cannot be re-fitted (computed
weights, ConvTranspose, Gemm with transA, ...) is listed with the reason and keeps its
inherited weights.

Layers are fitted in *waves*: a layer's wave is one more than the latest wave of any fitted
layer upstream of its input, so each wave sees inputs that the earlier waves already
reconstructed, and errors do not pile up.

Residual joins: when a fitted layer's output reaches an ``Add`` of two computed tensors
through per-channel affine ops only (BatchNormalization, Mul/Div/Add/Sub by constants),
its target is moved so that the *sum* matches the original's:
``y* = y_orig + (s_orig − s_compact) / a``, where ``s`` is the other input of the Add and
``a`` the chain's per-channel slope — the layer also absorbs what the other branch still
gets wrong. The other branch must be final before this layer's wave (it is scheduled so).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxmbs.compact.index import Layout
from onnxmbs.graph.analysis import Analysis
from onnxmbs.graph.proto import attr, node_names
from onnxmbs.ops.registry import kind

# the kinds of :attr:`onnxmbs.ops.rules.OpRules.fit`: re-fitted (Conv, Gemm, MatMul), weighted but kept,
# channel-wise (never mixes channels), reductions (mix when they reduce the channel axis); declined = mixes
FIT_KINDS = frozenset({"linear", "weighted", "channelwise", "reduce"})


@dataclass(frozen=True)
class Join:
    """The residual Add a fitted layer feeds: its other input and the chain's per-channel slope."""
    other: str
    slope: np.ndarray = field(repr=False)  # per original channel of the layer's output


@dataclass(frozen=True)
class Fit:
    name: str
    op: str
    x: str  # the input tensor (compact model)
    y: str  # the output tensor (original model's values are the target)
    out_pos: np.ndarray | None = field(repr=False)  # compact output position -> original channel; None = all
    join: Join | None
    wave: int


@dataclass(frozen=True)
class FitPlan:
    fits: tuple[Fit, ...]
    skipped: tuple[tuple[str, str], ...]  # (layer, why it keeps its inherited weights)

    @property
    def waves(self) -> int:
        return 1 + max((f.wave for f in self.fits), default=-1)


def _cut(layouts: Mapping[str, Layout], tensor: str) -> bool:
    lay = layouts.get(tensor)
    return lay is not None and not lay.full


def _is_depthwise(node, consts: Mapping[str, np.ndarray]) -> bool:
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    group = int(attr(node, "group", 1))
    return w is not None and group > 1 and w.shape[1] == 1 and w.shape[0] == group


def _mixes_channels(node, analysis: Analysis, layouts: Mapping[str, Layout], consts) -> bool:
    """Does this node combine different channels of a cut input into one output value?"""
    cut = [t for t in node.input if t and _cut(layouts, t)]
    if not cut:
        return False
    fit = kind(node.op_type, "fit")
    if fit == "linear":  # only a depthwise Conv keeps its channels apart
        return not _is_depthwise(node, consts)
    if fit == "reduce":
        axes = attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1] in consts:
            axes = consts[node.input[1]].tolist()
        rank = len(analysis.loaded.shapes.get(cut[0], ())) or 4
        lay = layouts[cut[0]]
        return axes is None or lay.axis in [int(a) % rank for a in axes]
    return fit != "channelwise"


def _why_not(node, consts: Mapping[str, np.ndarray], shapes) -> str | None:
    """None when the layer can be re-fitted, else the reason."""
    op = node.op_type
    if kind(op, "fit") != "linear":
        return f"{op} weights are not re-fitted"
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or node.input[0] in consts:
        return "its weights are computed, not constant"
    if op == "Conv" and (w.ndim != 4 or len(shapes.get(node.input[0], ())) != 4):
        return "only 2-D convolutions are re-fitted"
    if op == "Gemm" and attr(node, "transA", 0):
        return "Gemm with transA=1"
    if op in ("Gemm", "MatMul") and w.ndim != 2:
        return f"{op} with a {w.ndim}-D weight"
    return None


def _per_channel(value: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """A constant broadcast against ``shape`` as one value per channel of ``axis``, or None if it varies otherwise."""
    rank = len(shape)
    value = np.asarray(value, dtype=np.float64)
    if value.ndim > rank:
        return None
    full = value.reshape((1,) * (rank - value.ndim) + value.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != axis % rank):
        return None
    return np.broadcast_to(full.reshape(-1), (shape[axis],)).copy()


def _step(node, tensor: str, consts, shape, axis: int) -> np.ndarray | None:
    """The per-channel slope of one affine op applied to ``tensor``; None when it is not affine in it."""
    op = node.op_type
    if op == "BatchNormalization" and node.input[0] == tensor:
        scale, var = consts.get(node.input[1]), consts.get(node.input[4])
        if scale is None or var is None:
            return None
        return np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + attr(node, "epsilon", 1e-5))
    if op not in ("Mul", "Div", "Add", "Sub") or len(node.input) != 2:
        return None
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    value = consts.get(other)
    if value is None:
        return None
    vec = _per_channel(value, shape, axis)
    if vec is None or (op == "Div" and (other == node.input[0] or not np.all(vec))):
        return None
    if op == "Mul":
        return vec
    if op == "Div":
        return 1.0 / vec
    return np.full(shape[axis], -1.0 if (op == "Sub" and other == node.input[0]) else 1.0)


def find_join(y: str, axis: int, graph, consts, shapes, readers: Mapping[str, list[int]],
              outputs: set[str]) -> Join | None:
    """The residual Add reached from ``y`` through per-channel affine ops (single reader each)."""
    shape = shapes.get(y)
    if not shape:
        return None
    slope = np.ones(shape[axis])
    tensor = y
    for _ in range(8):
        users = readers.get(tensor, [])
        if len(users) != 1 or tensor in outputs:
            return None
        node = graph.node[users[0]]
        if node.op_type in ("Add", "Sum") and len(node.input) == 2 and not any(t in consts for t in node.input):
            other = node.input[1] if node.input[0] == tensor else node.input[0]
            same = shapes.get(other) == shape and shapes.get(node.output[0]) == shape
            return Join(other=other, slope=slope) if same and other != tensor else None
        step = _step(node, tensor, consts, shape, axis)
        if step is None or shapes.get(node.output[0]) != shape:
            return None
        slope, tensor = slope * step, node.output[0]
    return None


def plan_fits(analysis: Analysis, layouts: Mapping[str, Layout], consts: Mapping[str, np.ndarray]) -> FitPlan:
    """The layers to re-fit, their waves and targets, and the layers that keep inherited weights."""
    graph, shapes = analysis.loaded.graph, analysis.loaded.shapes
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            readers.setdefault(t, []).append(i)
    outputs = {o.name for o in graph.output}
    off: set[str] = set()
    level: dict[str, int] = {}  # tensor -> first wave that may read it
    fits, skipped = [], []
    for i, (node, name) in enumerate(zip(graph.node, node_names(graph))):
        ins = [t for t in node.input if t and t not in consts]
        wrong = any(t in off for t in ins) or _mixes_channels(node, analysis, layouts, consts)
        here = max((level.get(t, 0) for t in ins), default=0)
        out_level = here
        if wrong and kind(node.op_type, "fit") in ("linear", "weighted"):
            why = _why_not(node, consts, shapes)
            if why is None:
                fit = _fit(node, name, here, layouts, consts, shapes, graph, readers, outputs, level)
                fits.append(fit)
                out_level = fit.wave + 1
            else:
                skipped.append((name, why))
        for t in node.output:
            if wrong:
                off.add(t)
            level[t] = out_level
    return FitPlan(fits=tuple(fits), skipped=tuple(skipped))


def _fit(node, name: str, wave: int, layouts, consts, shapes, graph, readers, outputs, level) -> Fit:
    y = node.output[0]
    lay = layouts.get(y)
    axis = 1 if node.op_type == "Conv" else len(shapes.get(y, (0, 0))) - 1
    pos = None if lay is None or lay.full or lay.dims is not None else np.asarray(lay.pos)
    join = find_join(y, axis, graph, consts, shapes, readers, outputs)
    if join is not None and join.other in level:  # the other branch must already be final
        wave = max(wave, level[join.other])
    elif join is not None:
        join = None
    return Fit(name=name, op=node.op_type, x=node.input[0], y=y, out_pos=pos, join=join, wave=wave)
