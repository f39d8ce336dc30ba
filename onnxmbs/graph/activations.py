"""The activation tap of each conv (docs/algorithm.md §5).

From a conv's output, follow channel-preserving nodes only (BatchNormalization, Identity,
Add/Sub/Mul/Div with a scalar or per-channel constant, a residual Add of a same-shaped
tensor, Transpose) to the first ReLU-family node: Relu, Clip with min >= 0 (ReLU6), or
Max(x, 0). Several convs may share one tap (a residual block's last conv and its shortcut).

Extension beyond the paper (``statistic="extended"``, the default): the walk also stops at the
first activation of another kind — SiLU/Swish (``Sigmoid(x)·x`` as exporters emit it, or a
``Swish`` node), GELU (a ``Gelu`` node or torch's Erf form ``x·0.5·(1 + erf(x/√2))``), HardSwish
(the op or ``x·HardSigmoid(x)``/``x·Relu6(x+3)/6``), LeakyReLU, PReLU, ELU, SELU, CELU, Mish — and
its tap counts the outputs **> 0** (``statistic="positive"``). ReLU-family taps count non-zeros
(``statistic="nonzero"``); their outputs are never negative, so both are the same number and the
paper's case is unchanged. ``statistic="paper"`` turns the extension off: such convs get no tap.

Also beyond the paper, the walk passes a ``Concat`` along the channel axis (DenseNet: a dense
layer's conv output is concatenated before the next BN -> ReLU); the tap then names the conv's own
channel slice of that activation, whose values the concat leaves untouched.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxmbs.errors import MBSError
from onnxmbs.graph.load import LoadedModel
from onnxmbs.graph.shapes import ConvLayer
from onnxmbs.graph.proto import attr, node_names
from onnxmbs.ops.registry import kind


NONZERO, POSITIVE = "nonzero", "positive"  # what a tap counts (per layer, in the plan)
EXTENDED, PAPER = "extended", "paper"  # the policy: count > 0 after non-ReLU activations too, or not
POLICIES = (EXTENDED, PAPER)

@dataclass(frozen=True)
class Tap:
    node: str  # name of the activation node
    tensor: str  # its output, whose non-zeros (ReLU family) or positive values are counted
    channel_axis: int
    start: int = 0  # the conv's channels within the tapped tensor (after a Concat)
    stop: int | None = None
    statistic: str = NONZERO  # NONZERO (ReLU family, the paper) or POSITIVE (the extension)


def _relu(node: onnx.NodeProto, consts: Mapping[str, np.ndarray]) -> bool:
    return True


def _clip_relu(node: onnx.NodeProto, consts: Mapping[str, np.ndarray]) -> bool:
    """Clip with min >= 0 (ReLU6)."""
    low = attr(node, "min")
    if low is None and len(node.input) > 1 and node.input[1]:
        low = consts.get(node.input[1])
        low = None if low is None else float(np.min(low))
    return low is not None and low >= 0


def _max_relu(node: onnx.NodeProto, consts: Mapping[str, np.ndarray]) -> bool:
    """Max(x, 0)."""
    if len(node.input) != 2:
        return False
    other = [consts.get(i) for i in node.input if i in consts]
    return len(other) == 1 and other[0].size == 1 and float(other[0].reshape(-1)[0]) == 0.0


_RELU_KINDS = {"relu": _relu, "clip": _clip_relu, "max": _max_relu}  # ReLU family: their taps count non-zeros
# the kinds of :attr:`onnxmbs.ops.rules.OpRules.tap`, ``tap_gate`` and ``tap_walk``
TAP_KINDS = frozenset({*_RELU_KINDS, "positive", "gated"})  # positive: single-node activations, count > 0
GATE_KINDS = frozenset({"nonlinear", "affine"})  # affine: with one constant operand
WALK_KINDS = frozenset({"through", "transpose", "affine", "concat"})


def _gate_sources(tensor: str, producers: Mapping[str, onnx.NodeProto],
                  consts: Mapping[str, np.ndarray]) -> tuple[set[str], bool]:
    """Tensors ``tensor`` is computed from through elementwise gate ops, and whether one is non-linear."""
    seen, nonlinear = {tensor}, False
    for _ in range(8):
        node = producers.get(tensor)
        if node is None or not node.input:
            break
        gate = kind(node.op_type, "tap_gate")
        if gate == "nonlinear":
            nonlinear, tensor = True, node.input[0]
        elif gate == "affine" and len(node.input) == 2 and sum(i in consts for i in node.input) == 1:
            tensor = next(i for i in node.input if i not in consts)
        else:
            break
        seen.add(tensor)
    return seen, nonlinear


def _is_gated(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto],
              consts: Mapping[str, np.ndarray]) -> bool:
    """``Mul(f(x), g(x))`` with a non-linear gate: SiLU, HardSwish, torch's Erf GELU, Mish as exported."""
    if len(node.input) != 2 or any(i in consts for i in node.input):
        return False
    (a, nonlinear_a), (b, nonlinear_b) = (_gate_sources(i, producers, consts) for i in node.input)
    return bool(a & b) and (nonlinear_a or nonlinear_b)


def activation_kind(node: onnx.NodeProto, tensor: str, consts: Mapping[str, np.ndarray],
                    producers: Mapping[str, onnx.NodeProto]) -> str | None:
    """NONZERO for a ReLU-family node on ``tensor``, POSITIVE for another activation, else None."""
    tap = kind(node.op_type, "tap")
    first = bool(node.input) and node.input[0] == tensor
    if first and tap in _RELU_KINDS and _RELU_KINDS[tap](node, consts):
        return NONZERO
    if first and tap == "positive":
        return POSITIVE
    if tap == "gated" and tensor in node.input and _is_gated(node, producers, consts):
        return POSITIVE
    return None


def _passes(node: onnx.NodeProto, tensor: str, loaded: LoadedModel) -> bool:
    """Does ``node`` keep the channels of ``tensor`` one-to-one?"""
    walk, consts, shapes = kind(node.op_type, "tap_walk"), loaded.constants, loaded.shapes
    if walk in ("through", "transpose"):
        return node.input[0] == tensor
    if walk != "affine" or len(node.input) != 2:
        return False
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    if other in consts:
        return consts[other].size <= max(shapes.get(tensor, (1, 1))[1:] or (1,))
    return node.op_type == "Add" and shapes.get(other) == shapes.get(tensor) is not None  # a residual join


def find_taps(loaded: LoadedModel, convs: tuple[ConvLayer, ...], *,
              statistic: str = EXTENDED) -> dict[str, Tap | None]:
    """Conv name -> its activation tap, or None (linear bottleneck; SiLU etc. under "paper": p = 1)."""
    if statistic not in POLICIES:
        raise MBSError(f"unknown statistic {statistic!r} — use one of: {', '.join(POLICIES)}")
    graph = loaded.graph
    names = node_names(graph)
    consumers: dict[str, list[int]] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
        producers.update((o, node) for o in node.output)
    taps = {c.name: _walk(c.output, consumers, producers, graph, names, loaded) for c in convs}
    if statistic == PAPER:  # the first activation is not ReLU-family: not measured (p = 1)
        taps = {name: tap if tap is None or tap.statistic == NONZERO else None for name, tap in taps.items()}
    return taps


def _walk(start: str, consumers: dict[str, list[int]], producers: Mapping[str, onnx.NodeProto],
          graph: onnx.GraphProto, names: list[str], loaded: LoadedModel) -> Tap | None:
    width = loaded.shapes.get(start, (0, 0))[1]
    stack, seen = [(start, 1, 0)], set()
    while stack:
        tensor, axis, offset = stack.pop(0)
        for i in consumers.get(tensor, []):
            node = graph.node[i]
            kind = activation_kind(node, tensor, loaded.constants, producers)
            if kind is not None:
                stop = offset + width if offset or width != loaded.shapes.get(tensor, (0,) * 4)[axis] else None
                return Tap(node=names[i], tensor=node.output[0], channel_axis=axis, start=offset, stop=stop,
                           statistic=kind)
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
    walk = kind(node.op_type, "tap_walk")
    if walk == "concat":
        rank = len(loaded.shapes.get(node.output[0], ())) or 4
        if attr(node, "axis", 1) % rank != axis or list(node.input).count(tensor) != 1:
            return None
        before = node.input[:list(node.input).index(tensor)]
        return axis, sum(loaded.shapes[t][axis] for t in before)
    if not _passes(node, tensor, loaded):
        return None
    return (list(attr(node, "perm")).index(axis) if walk == "transpose" else axis), 0
