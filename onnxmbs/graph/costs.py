"""Parameter and MAC counting, one rule per op type (fvcore style; the registry, :mod:`onnxmbs.ops`,
names each op's MAC kind and parameter inputs).

Parameters are the learnable elements a framework would count: Conv/ConvTranspose weights
and biases, Gemm/MatMul weights and biases, BatchNormalization scale and bias (not the
running statistics), LayerNorm/GroupNorm scale and bias, PRelu slopes and per-channel affine
constants (Mul/Add/Sub/Div with a float constant of more than one element, as tf2onnx leaves
unfused BatchNorm, applied to a weighted layer's output through per-channel ops; integer constants
there are index arithmetic, and anchors applied to a reshaped tensor are not weights). Each initializer
counts once however often it is used. MACs are per image.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx

from onnxmbs.graph.proto import attr
from onnxmbs.ops.registry import kind, param_inputs

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Costs:
    params: int
    flops: int  # multiply-accumulates per image


def _numel(shape: Shape | None) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def _conv_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], batch: int) -> int:
    w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
    if w is None or out is None:
        return 0
    return _numel(w[1:]) * _numel(out) // max(batch, 1)  # k_h*k_w*(C_in/g) * C_out*H*W


def _matmul_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], batch: int) -> int:
    a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a is None or out is None:
        return 0
    trans_a = bool(attr(node, "transA", 0))
    k = a[-2] if trans_a else a[-1]
    return k * _numel(out) // max(batch, 1)


def _conv_transpose_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], batch: int) -> int:
    w, x = shapes.get(node.input[1]), shapes.get(node.input[0])
    if w is None or x is None or len(x) < 3:
        return 0
    return _numel(w) * _numel(x[2:])  # C_in*(C_out/g)*k_h*k_w per input pixel


MacRule = Callable[[onnx.NodeProto, Mapping[str, Shape], int], int]
# the kinds of :attr:`onnxmbs.ops.rules.OpRules.macs`; a declined or unknown op counts none
MAC_KINDS: dict[str, MacRule] = {
    "conv": _conv_macs,
    "conv_transpose": _conv_transpose_macs,
    "matmul": _matmul_macs,
}


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], batch: int = 1) -> int:
    """Multiply-accumulates per image of one node (0 for ops without a MAC rule)."""
    rule = kind(node.op_type, "macs")
    return MAC_KINDS[rule](node, shapes, batch) if rule else 0


def param_tensors(graph: onnx.GraphProto, constants: Mapping[str, object], *,
                  model_graph: onnx.GraphProto | None = None) -> set[str]:
    """Names of the constant tensors that count as parameters: learnable weights, i.e. initializers (or
    tensors forwarded from them). Values of ``Constant`` nodes are what a head computes with (anchors,
    strides, grids), not weights: exporters store trained weights as initializers. ``model_graph``: the
    whole graph, where ``graph`` holds only some of its nodes (a block)."""
    names: set[str] = set()
    whole = model_graph if model_graph is not None else graph
    learnable = _from_initializers(whole)
    learned = _Learned(whole, constants)
    for node in graph.node:
        params = param_inputs(node.op_type)
        for idx in params.inputs if params else ():
            if idx >= len(node.input) or node.input[idx] not in constants:
                continue
            if params.vectors_only and not (_affine_constant(constants[node.input[idx]]) and any(
                    learned(t) for t in node.input if t and t not in constants)):
                continue
            if node.input[idx] in learnable:
                names.add(node.input[idx])
    return names


class _Learned:
    """Does a tensor come from a weighted layer (Conv, Gemm, MatMul, a normalisation) through per-channel
    affine ops, activations, transposes and ops that keep their input's channels (Neg, pooling, Pad, ...)? A constant an element-wise op applies to such a tensor is a
    learnable per-channel scale or shift (tf2onnx's unfused BatchNorm, a Linear's bias, ConvNeXt's layer
    scale); one applied to the model input or to a reshaped or concatenated tensor is something the graph
    computes with (input normalisation, a detector's anchors and strides, which some exporters store as
    initializers)."""

    def __init__(self, graph: onnx.GraphProto, constants: Mapping[str, object]) -> None:
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.constants, self.memo = constants, {}

    def __call__(self, tensor: str, depth: int = 64) -> bool:
        if tensor not in self.memo:
            self.memo[tensor] = False  # cycles and deep chains: not learned
            self.memo[tensor] = self._walk(tensor, depth)
        return self.memo[tensor]

    def _walk(self, tensor: str, depth: int) -> bool:
        node = self.producer.get(tensor)
        if node is None or depth == 0:
            return False
        params = param_inputs(node.op_type)
        if params is not None and not params.vectors_only:
            return True  # Conv, Gemm, MatMul, BatchNorm, LayerNorm, PRelu
        passes = (kind(node.op_type, "tap_walk") in ("through", "transpose", "affine")
                  or kind(node.op_type, "tap") is not None or kind(node.op_type, "channels") == "first")
        if not passes:  # a reshape, concatenation, split, gather, ...: the channels are no longer the layer's
            return False
        return any(self(t, depth - 1) for t in node.input if t and t not in self.constants)


def _from_initializers(graph: onnx.GraphProto) -> set[str]:
    """Initializers and the tensors that only forward them (Identity, Cast: the same values, another name
    or type)."""
    found = {init.name for init in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Identity", "Cast") and node.input and node.input[0] in found:
            found.update(node.output)
    return found


def _affine_constant(value: object) -> bool:
    """A per-channel float constant of an elementwise op; not ``x * 0.5``, nor integer index arithmetic
    (the dynamo exporter's ``Add(Range(..), [0, 1, ..., C-1])`` around an adaptive pooling)."""
    dtype = getattr(value, "dtype", None)
    return getattr(value, "size", 1) > 1 and (dtype is None or dtype.kind in "fc")


def count_costs(graph: onnx.GraphProto, shapes: Mapping[str, Shape], constants: Mapping[str, object],
                *, batch: int = 1) -> Costs:
    params = sum(int(getattr(constants[name], "size", 0)) for name in param_tensors(graph, constants))
    flops = sum(node_macs(n, shapes, batch) for n in graph.node)
    return Costs(params=params, flops=flops)
