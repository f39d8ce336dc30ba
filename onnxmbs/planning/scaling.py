"""How each parameter tensor's axes follow the channel groups.

One :class:`~onnxmbs.planning.facts.ParamSpec` per constant (and per further use of a shared constant
whose axes follow other channel groups: the writer stores one copy per distinct cut) that :mod:`onnxmbs.graph.costs` counts (plus
BatchNorm running statistics, which are resized but not counted). The planner multiplies
compact widths through these to predict the compact model's params and MACs; the compact
ONNX writer cuts the same axes.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx

from onnxmbs.graph.analysis import Analysis
from onnxmbs.graph.channels import Chan
from onnxmbs.graph.costs import param_tensors
from onnxmbs.planning.facts import DimSpec, ParamSpec
from onnxmbs.graph.proto import attr, node_names
from onnxmbs.ops.registry import kind, param_inputs


def _tied(size: int, chan: Chan | None, analysis: Analysis, divisor: int = 1) -> DimSpec:
    if chan is None or chan.split:
        return DimSpec(size)
    widths = {g.id: g.channels for g in analysis.channels.groups}
    if sum(widths[g] for g in chan.segs) // divisor != size:
        return DimSpec(size)
    return DimSpec(size, chan.segs, divisor)


def _conv_specs(node: onnx.NodeProto, name: str, analysis: Analysis, ctx: dict) -> list[ParamSpec]:
    conv = ctx["convs"][name]
    w = analysis.loaded.shapes[node.input[1]]
    chans = analysis.channels.tensor_chan
    out, inp = chans.get(node.output[0]), chans.get(node.input[0])
    g = conv.groups
    if g == 1:
        in_dim = _tied(w[1], inp, analysis)
    elif g == conv.in_channels:  # depthwise: one input channel per filter
        in_dim = DimSpec(w[1])
    else:
        in_dim = _tied(w[1], inp, analysis, divisor=g)
    out_dim = _tied(w[0], out, analysis)
    specs = [ParamSpec(node.input[1], (out_dim, in_dim, DimSpec(w[2]), DimSpec(w[3])),
                       macs_per_element=conv.out_hw[0] * conv.out_hw[1])]
    if conv.bias:
        specs.append(ParamSpec(conv.bias, (out_dim,)))
    return specs


def _matmul_specs(node: onnx.NodeProto, name: str, analysis: Analysis, ctx: dict) -> list[ParamSpec]:
    shapes, chans = analysis.loaded.shapes, analysis.channels.tensor_chan
    if node.input[1] not in analysis.loaded.constants:
        return []
    w = shapes[node.input[1]]
    trans_b = node.op_type == "Gemm" and attr(node, "transB", 0)
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    dims = [DimSpec(d) for d in w]
    dims[k_axis] = _tied(w[k_axis], chans.get(node.input[0]), analysis)
    dims[n_axis] = _tied(w[n_axis], chans.get(node.output[0]), analysis)
    y = shapes.get(node.output[0])
    per = math.prod(y) // (y[0] * y[-1]) if y else 1
    specs = [ParamSpec(node.input[1], tuple(dims), macs_per_element=per)]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in analysis.loaded.constants:
        bias = shapes[node.input[2]]
        specs.append(ParamSpec(node.input[2], tuple(dims[n_axis] if d == w[n_axis] else DimSpec(d) for d in bias)))
    return specs


def _channelwise_specs(node: onnx.NodeProto, name: str, analysis: Analysis, ctx: dict, *,
                       bn: bool = False) -> list[ParamSpec]:
    """BatchNorm statistics and per-channel affine constants: the axis aligned with the data's channels."""
    shapes, chans, consts = analysis.loaded.shapes, analysis.channels.tensor_chan, analysis.loaded.constants
    data = next((i for i in node.input if i not in consts and i in chans), None)
    chan, rank = (chans[data], len(shapes.get(data, ()))) if data else (None, 0)
    specs = []
    params = param_inputs(node.op_type)
    for idx in (1, 2, 3, 4) if bn else params.inputs if params else ():
        if idx >= len(node.input) or node.input[idx] not in ctx["params"] | ctx["bn"]:
            continue
        shape = shapes[node.input[idx]]
        dims = []
        for pos, size in enumerate(shape):
            axis = 1 if bn else pos + rank - len(shape)
            dims.append(_tied(size, chan, analysis) if chan is not None and axis == chan.axis and size > 1
                        else DimSpec(size))
        specs.append(ParamSpec(node.input[idx], tuple(dims), is_param=node.input[idx] in ctx["params"]))
    return specs


def _batchnorm_specs(node: onnx.NodeProto, name: str, analysis: Analysis, ctx: dict) -> list[ParamSpec]:
    """Scale, bias and the running statistics (resized, not counted)."""
    return _channelwise_specs(node, name, analysis, ctx, bn=True)


# the kinds of :attr:`onnxmbs.ops.rules.OpRules.spec`
SPEC_KINDS: dict[str, Callable[[onnx.NodeProto, str, Analysis, dict], list[ParamSpec]]] = {
    "conv": _conv_specs,
    "matmul": _matmul_specs,
    "batchnorm": _batchnorm_specs,
    "channelwise": _channelwise_specs,
}


def param_specs(analysis: Analysis) -> tuple[ParamSpec, ...]:
    """Every counted parameter tensor (and BN statistics) with the groups its axes follow."""
    graph, consts = analysis.loaded.graph, analysis.loaded.constants
    ctx = {"params": param_tensors(graph, consts), "convs": {c.name: c for c in analysis.layers},
           "bn": {n.input[i] for n in graph.node if kind(n.op_type, "spec") == "batchnorm" for i in (3, 4)}}
    specs: dict[str, ParamSpec] = {}
    copies: dict[tuple[str, tuple], ParamSpec] = {}
    for node, name in zip(graph.node, node_names(graph)):
        rule = kind(node.op_type, "spec")
        for spec in SPEC_KINDS[rule](node, name, analysis, ctx) if rule else ():
            first = specs.setdefault(spec.name, spec)
            if spec.dims != first.dims:  # a shared tensor whose uses follow other groups (the writer copies it)
                copies.setdefault((spec.name, spec.dims), replace(spec, copy=True, macs_per_element=0))
    for name in sorted(ctx["params"] - set(specs)):  # e.g. ConvTranspose: counted, never resized
        specs[name] = ParamSpec(name, tuple(DimSpec(d) for d in analysis.loaded.shapes[name]))
    shared = {name for name, _ in copies}
    uniform = {name for name in shared if _uniform(consts.get(name), specs[name])}
    return (*(replace(s, uniform=True) if s.name in uniform else s for s in specs.values()),
            *(replace(s, uniform=True) if s.name in uniform else s for s in copies.values()))


def _uniform(value, spec: ParamSpec) -> bool:
    """Are the values the same along every axis that channel groups cut (an untrained BatchNorm's γ/σ)?"""
    if value is None or value.ndim != len(spec.dims):
        return False
    return all(bool(np.all(value == value.take([0], axis=i))) for i, d in enumerate(spec.dims) if d.groups)

