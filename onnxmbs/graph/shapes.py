"""Shapes and receptive fields of every Conv (docs/algorithm.md §3).

``(rf, jump)`` is propagated from the input ``(1, 1)`` in topological order with one rule
per op type: the registry (:mod:`onnxmbs.ops`) names the kind of each op (:data:`RF_KINDS`). Ops
without a rule pass their spatial input through and are counted in
:attr:`ShapeAnalysis.unknown_ops`, never crashed on.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxmbs.graph.costs import count_costs
from onnxmbs.errors import MBSError
from onnxmbs.graph.load import LoadedModel
from onnxmbs.graph.proto import attr, node_names
from onnxmbs.ops.registry import kind

INF = math.inf


@dataclass(frozen=True)
class Field:
    """Receptive field size and jump (input pixels per output step) of a tensor."""

    rf: float
    jump: float


@dataclass(frozen=True)
class ConvLayer:
    """One ONNX Conv node with everything MBS needs about it."""

    name: str
    index: int  # position in topological order among all nodes
    input: str
    output: str
    weight: str
    bias: str | None
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]
    rf: int | None  # None = infinite (input passed a global pooling / flatten / matmul)
    flops: int  # MACs per image
    params: int


@dataclass(frozen=True)
class ShapeAnalysis:
    convs: tuple[ConvLayer, ...]
    fields: Mapping[str, Field]
    params: int  # whole model
    flops: int  # whole model, MACs per image
    unknown_ops: Mapping[str, int]  # op type -> count of nodes RF propagation has no rule for


# ---------------------------------------------------------------- RF rules
Rule = Callable[[onnx.NodeProto, list, "_Ctx"], Field | None]


@dataclass(frozen=True)
class _Ctx:
    shapes: Mapping[str, tuple[int, ...]]
    constants: Mapping[str, np.ndarray]


def _windowed(kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...], f: Field) -> Field:
    if math.isinf(f.rf):
        return f
    k = max(kernel) if kernel else 1  # non-square kernels: the larger axis
    k_eff = dilation[0] * (k - 1) + 1
    return Field(rf=f.rf + (k_eff - 1) * f.jump, jump=f.jump * stride[0])


def _conv_rule(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> Field | None:
    f = fields[0]
    if f is None:
        return None
    w = ctx.shapes.get(node.input[1])
    kernel = tuple(attr(node, "kernel_shape", w[2:] if w else (1, 1)))
    return _windowed(kernel, tuple(attr(node, "strides", (1, 1))), tuple(attr(node, "dilations", (1, 1))), f)


def _pool_rule(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> Field | None:
    f = fields[0]
    if f is None:
        return None
    kernel = tuple(attr(node, "kernel_shape", (1, 1)))
    return _windowed(kernel, tuple(attr(node, "strides", (1,) * len(kernel))),
                     tuple(attr(node, "dilations", (1,) * len(kernel))), f)


def _global_rule(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> Field | None:
    return Field(INF, INF) if any(f is not None for f in fields) else None


def _matmul_rule(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> Field | None:
    """A MatMul on a 4-D tensor by a 2-D weight maps each position's channels (ConvNeXt's channels-last Linear):
    the field is kept. Otherwise (a classifier on flattened features) it is global."""
    shape, weight = ctx.shapes.get(node.input[0]), ctx.shapes.get(node.input[1]) if len(node.input) > 1 else None
    if fields and fields[0] is not None and shape is not None and len(shape) == 4 and weight is not None \
            and len(weight) == 2 and node.input[1] in ctx.constants:
        return fields[0]
    return _global_rule(node, fields, ctx)


def _reduce_rule(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> Field | None:
    """Reduce over two or more non-trivial axes (spatial pooling) -> infinite; over one axis -> unchanged."""
    if fields[0] is None:
        return None
    shape = ctx.shapes.get(node.input[0])
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1] in ctx.constants:
        axes = ctx.constants[node.input[1]].tolist()
    if shape is None or axes is None:
        return Field(INF, INF)
    wide = [a for a in axes if shape[a % len(shape)] > 1]
    return Field(INF, INF) if len(wide) >= 2 else fields[0]


def _resize_rule(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> Field | None:
    f = fields[0]
    if f is None:
        return None
    x, y = ctx.shapes.get(node.input[0]), ctx.shapes.get(node.output[0])
    factor = math.sqrt(math.prod(y) / math.prod(x)) if x and y and len(x) == len(y) == 4 else 1.0
    return Field(rf=f.rf, jump=f.jump / factor if factor > 0 else f.jump)


def _no_field(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> Field | None:
    return None


def _pass_rule(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> Field | None:
    """Element-wise, shape-only and layout ops: the widest field of the spatial inputs."""
    spatial = _spatial_inputs(node, fields, ctx)
    if not spatial:
        return None
    return Field(rf=max(f.rf for f in spatial), jump=max(f.jump for f in spatial))


# the kinds of :attr:`onnxmbs.ops.rules.OpRules.rf`
RF_KINDS: dict[str, Rule] = {
    "conv": _conv_rule,
    "pool": _pool_rule,
    "global": _global_rule,
    "matmul": _matmul_rule,
    "reduce": _reduce_rule,
    "resize": _resize_rule,
    "none": _no_field,
    "pass": _pass_rule,
}


def _spatial_inputs(node: onnx.NodeProto, fields: list, ctx: _Ctx) -> list[Field]:
    """Inputs with a field, without those broadcast over space (e.g. an SE gate of 1x1)."""
    present = [(name, f) for name, f in zip(node.input, fields) if f is not None]
    out = ctx.shapes.get(node.output[0]) if node.output else None
    if out is not None and len(present) > 1:
        full = [f for name, f in present if ctx.shapes.get(name) and math.prod(ctx.shapes[name]) == math.prod(out)]
        if full:
            return full
    return [f for _, f in present]


def _propagate(node: onnx.NodeProto, fields: list, ctx: _Ctx, unknown: Counter) -> Field | None:
    rule = kind(node.op_type, "rf")
    if rule is None:  # declined or unknown: counted, and the input's field passed on
        unknown[node.op_type] += 1
    return RF_KINDS[rule or "pass"](node, fields, ctx)


def _conv_record(node: onnx.NodeProto, name: str, index: int, field: Field | None, ctx: _Ctx, batch: int) -> ConvLayer:
    w, y = ctx.shapes.get(node.input[1]), ctx.shapes.get(node.output[0])
    if w is None or y is None or len(y) != 4:
        raise MBSError(f"Conv '{name}' has unknown weight or output shape — run the model through "
                       "onnx shape inference or onnxsim, or give --input-shape")
    groups = int(attr(node, "group", 1))
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    params = math.prod(w) + (w[0] if bias else 0)
    flops = math.prod(w[1:]) * y[1] * y[2] * y[3]
    rf = None if field is None or math.isinf(field.rf) else int(round(field.rf))
    return ConvLayer(
        name=name, index=index, input=node.input[0], output=node.output[0], weight=node.input[1], bias=bias,
        in_channels=w[1] * groups, out_channels=w[0], groups=groups, kernel=(w[2], w[3]),
        stride=tuple(attr(node, "strides", (1, 1))), dilation=tuple(attr(node, "dilations", (1, 1))),
        out_hw=(y[2], y[3]), rf=rf, flops=flops, params=params)


def analyze_shapes(loaded: LoadedModel) -> ShapeAnalysis:
    """Receptive field, output size, params and MACs of every Conv, plus whole-model totals."""
    graph = loaded.graph
    ctx = _Ctx(shapes=loaded.shapes, constants=loaded.constants)
    fields: dict[str, Field] = {loaded.input.name: Field(1.0, 1.0)}
    unknown: Counter[str] = Counter()
    convs = []
    batch = loaded.input.shape[0]
    for index, (node, name) in enumerate(zip(graph.node, node_names(graph))):
        ins = [fields.get(i) if i not in ctx.constants else None for i in node.input]
        out = _propagate(node, ins, ctx, unknown)
        for o in node.output:
            if out is not None and o:
                fields[o] = out
        if node.op_type == "Conv":
            convs.append(_conv_record(node, name, index, out if ins and ins[0] is not None else None, ctx, batch))
    if not convs:
        raise MBSError("the model has no Conv node — onnxmbs plans widths of convolutional networks; "
                       "this model is not a CNN")
    costs = count_costs(graph, ctx.shapes, ctx.constants, batch=batch)
    return ShapeAnalysis(convs=tuple(convs), fields=fields, params=costs.params, flops=costs.flops,
                         unknown_ops=dict(unknown))
