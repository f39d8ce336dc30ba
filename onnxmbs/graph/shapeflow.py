"""Reshapes whose target shape is read at run time from the width of a channel group they do not carry.

TorchScript exports ``B, C, H, W = x.shape; y.view(B, C, H, W)`` as ``Shape(x) → Gather → Concat →
Reshape(y, …)``. When ``y`` carries ``x``'s channels, cutting them is consistent. When it does not —
YOLO11's attention reshapes its frozen ``q·k·v`` product to the width of its (cut) input — the compact
model would reshape full-width data to the compact width and fail. This pass finds such Reshapes
(and Expands) after the channel walk, so the channel stage can freeze the groups whose width they
read. Only the channel entry of a ``Shape`` counts: a ``Gather`` or ``Slice`` that takes the batch or
spatial sizes alone carries no width.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from onnxmbs.graph.proto import attr, node_names

_PASS = frozenset({"Cast", "Identity", "Concat", "Unsqueeze", "Squeeze", "Add", "Sub", "Mul", "Div", "Max", "Min"})
_TARGETS = {"Reshape": 1, "Expand": 1}


def width_readers(graph: onnx.GraphProto, chan_of: Callable[[str], object | None],
                  consts: Mapping[str, np.ndarray]) -> list[tuple[object, str]]:
    """(the Chan whose width a Reshape/Expand reads, why) for every one whose data does not carry that Chan."""
    deps: dict[str, list] = {}  # tensor -> the Chans whose channel count its value contains
    found = []
    for node, name in zip(graph.node, node_names(graph)):
        if node.op_type == "Shape":
            chan = chan_of(node.input[0])
            if chan is not None and _keeps(node, chan.axis):
                deps[node.output[0]] = [chan]
        elif node.op_type in ("Gather", "Slice") and node.input[0] in deps:
            if _picks(node, deps[node.input[0]], consts):
                deps[node.output[0]] = deps[node.input[0]]
        elif node.op_type in _PASS:
            got = [c for t in node.input if t in deps for c in deps[t]]
            if got:
                deps[node.output[0]] = got
        elif node.op_type in _TARGETS and len(node.input) > _TARGETS[node.op_type]:
            data = chan_of(node.input[0])
            for chan in deps.get(node.input[_TARGETS[node.op_type]], ()):
                if data is None or not set(chan.segs) <= set(data.segs):
                    found.append((chan, f"{node.op_type} '{name}' reads these channels' count at run time for data "
                                        "that does not carry them"))
    return found


def _keeps(node: onnx.NodeProto, axis: int) -> bool:
    """Does this Shape node's output include the entry of ``axis``?"""
    start, end = attr(node, "start", 0), attr(node, "end", None)
    return start <= axis and (end is None or axis < end)  # negative bounds are rare here: counted as kept


def _picks(node: onnx.NodeProto, chans: list, consts: Mapping[str, np.ndarray]) -> bool:
    """Does a Gather/Slice of a Shape keep the channel entry? (unknown indices: assume it does)."""
    axes = {c.axis for c in chans}
    if node.op_type == "Gather":
        index = consts.get(node.input[1]) if len(node.input) > 1 else None
        return index is None or bool(axes & {int(i) for i in np.asarray(index).reshape(-1)})
    starts = consts.get(node.input[1]) if len(node.input) > 1 else None
    ends = consts.get(node.input[2]) if len(node.input) > 2 else None
    if starts is None or ends is None:
        return True
    s, e = int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0])
    return any(s <= a < e for a in axes)
