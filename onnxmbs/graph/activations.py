"""Stage 3a — the activation tap of each conv (docs/algorithm.md §5).

From a conv's output, follow channel-preserving nodes only (BatchNormalization, Identity,
Add/Sub/Mul/Div with a scalar or per-channel constant, a residual Add of a same-shaped
tensor, Transpose) to the first ReLU-family node: Relu, Clip with min >= 0 (ReLU6), or
Max(x, 0). Several convs may share one tap (a residual block's last conv and its shortcut).

Beyond the paper, the walk also passes a ``Concat`` along the channel axis (DenseNet: a dense
layer's conv output is concatenated before the next BN -> ReLU); the tap then names the conv's own
channel slice of that activation, whose values the concat leaves untouched.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxmbs.graph.load import LoadedModel
from onnxmbs.graph.shapes import ConvLayer, attr, node_names


@dataclass(frozen=True)
class Tap:
    node: str  # name of the ReLU-family node
    tensor: str  # its output, whose non-zeros are counted
    channel_axis: int
    start: int = 0  # the conv's channels within the tapped tensor (after a Concat)
    stop: int | None = None


def _is_relu(node: onnx.NodeProto, consts: Mapping[str, np.ndarray]) -> bool:
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip":
        low = attr(node, "min")
        if low is None and len(node.input) > 1 and node.input[1]:
            low = consts.get(node.input[1])
            low = None if low is None else float(np.min(low))
        return low is not None and low >= 0
    if node.op_type == "Max" and len(node.input) == 2:
        other = [consts.get(i) for i in node.input if i in consts]
        return len(other) == 1 and other[0].size == 1 and float(other[0].reshape(-1)[0]) == 0.0
    return False


def _passes(node: onnx.NodeProto, tensor: str, loaded: LoadedModel) -> bool:
    """Does ``node`` keep the channels of ``tensor`` one-to-one?"""
    op, consts, shapes = node.op_type, loaded.constants, loaded.shapes
    if op in ("BatchNormalization", "Identity", "Transpose"):
        return node.input[0] == tensor
    if op not in ("Add", "Sub", "Mul", "Div") or len(node.input) != 2:
        return False
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    if other in consts:
        return consts[other].size <= max(shapes.get(tensor, (1, 1))[1:] or (1,))
    return op == "Add" and shapes.get(other) == shapes.get(tensor) is not None


def find_taps(loaded: LoadedModel, convs: tuple[ConvLayer, ...]) -> dict[str, Tap | None]:
    """Conv name -> its activation tap, or None (linear bottleneck, SiLU, ...: p = 1, not measured)."""
    graph = loaded.graph
    names = node_names(graph)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    return {c.name: _walk(c.output, consumers, graph, names, loaded) for c in convs}


def _walk(start: str, consumers: dict[str, list[int]], graph: onnx.GraphProto, names: list[str],
          loaded: LoadedModel) -> Tap | None:
    width = loaded.shapes.get(start, (0, 0))[1]
    stack, seen = [(start, 1, 0)], set()
    while stack:
        tensor, axis, offset = stack.pop(0)
        for i in consumers.get(tensor, []):
            node = graph.node[i]
            if _is_relu(node, loaded.constants) and node.input[0] == tensor:
                stop = offset + width if offset or width != loaded.shapes.get(tensor, (0,) * 4)[axis] else None
                return Tap(node=names[i], tensor=node.output[0], channel_axis=axis, start=offset, stop=stop)
            if i in seen:
                continue
            step = _step(node, tensor, axis, loaded)
            if step is None:
                continue
            seen.add(i)
            new_axis, shift = step
            stack.append((node.output[0], new_axis, offset + shift))
    return None


def _step(node: onnx.NodeProto, tensor: str, axis: int, loaded: LoadedModel) -> tuple[int, int] | None:
    """(channel axis, channel offset) of ``tensor``'s channels in the node's output, or None to stop."""
    if node.op_type == "Concat":
        rank = len(loaded.shapes.get(node.output[0], ())) or 4
        if attr(node, "axis", 1) % rank != axis or list(node.input).count(tensor) != 1:
            return None
        before = node.input[:list(node.input).index(tensor)]
        return axis, sum(loaded.shapes[t][axis] for t in before)
    if not _passes(node, tensor, loaded):
        return None
    return (list(attr(node, "perm")).index(axis) if node.op_type == "Transpose" else axis), 0
