"""Parameter and MAC counting, one rule per op type (fvcore style).

Parameters are the learnable elements a framework would count: Conv/ConvTranspose weights
and biases, Gemm/MatMul weights and biases, BatchNormalization scale and bias (not the
running statistics), PRelu slopes and per-channel affine constants (Mul/Add/Sub/Div with a
constant of more than one element, as tf2onnx leaves unfused BatchNorm). Each initializer
counts once however often it is used. MACs are per image.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx

from onnxmbs.graph.proto import attr

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
MAC_RULES: dict[str, MacRule] = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _matmul_macs,
    "MatMul": _matmul_macs,
}

# Which inputs of an op hold parameters (when they are constants).
PARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "BatchNormalization": (1, 2),
    "PRelu": (1,),
    "Mul": (0, 1),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Div": (1,),
}
_AFFINE = {"Mul", "Add", "Sub", "Div"}


def param_tensors(graph: onnx.GraphProto, constants: Mapping[str, object]) -> set[str]:
    """Names of the constant tensors that count as parameters."""
    names: set[str] = set()
    for node in graph.node:
        for idx in PARAM_INPUTS.get(node.op_type, ()):
            if idx >= len(node.input) or node.input[idx] not in constants:
                continue
            size = getattr(constants[node.input[idx]], "size", 1)
            if node.op_type in _AFFINE and size <= 1:
                continue
            names.add(node.input[idx])
    return names


def count_costs(graph: onnx.GraphProto, shapes: Mapping[str, Shape], constants: Mapping[str, object],
                *, batch: int = 1) -> Costs:
    params = sum(int(getattr(constants[name], "size", 0)) for name in param_tensors(graph, constants))
    flops = sum(MAC_RULES[n.op_type](n, shapes, batch) for n in graph.node if n.op_type in MAC_RULES)
    return Costs(params=params, flops=flops)
