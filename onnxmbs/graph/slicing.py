"""Which range of one axis each output of a Split or Slice takes — read once for every stage.

The channel stage (:mod:`onnxmbs.graph.channels`) cuts channel groups at these boundaries, the
index stage (:mod:`onnxmbs.compact.index`) gives each output its share of the kept channels,
and the surgery (:mod:`onnxmbs.compact.surgery`) rewrites the sizes and bounds for the compact
widths. ``None`` means the ranges cannot be known ahead of run time (computed sizes or bounds, a
step other than 1 on that axis): the channel stage then freezes what the node reads.

* ``Split``: the sizes come from its ``split`` input (opset ≥ 13) or attribute (opset < 13), else
  the outputs' inferred shapes (equal parts, opset 18's ``num_outputs``).
* ``Slice``: ``starts``/``ends``/``axes``/``steps`` from constant inputs (opset ≥ 10) or
  attributes (opset < 10), normalised as ONNX does (negative bounds count from the end, bounds
  clamped to the axis).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxmbs.graph.proto import attr

Range = tuple[int, int]  # [start, stop) along the axis


def split_axis(node: onnx.NodeProto, rank: int) -> int:
    return int(attr(node, "axis", 0)) % max(rank, 1)


def split_sizes(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]],
                consts: Mapping[str, np.ndarray]) -> tuple[int, ...] | None:
    """The original sizes of a Split's outputs along its axis."""
    rank = len(shapes.get(node.input[0], ()))
    if len(node.input) > 1 and node.input[1]:
        value = consts.get(node.input[1])
        return None if value is None else tuple(int(v) for v in np.asarray(value).reshape(-1))
    if attr(node, "split", None) is not None:
        return tuple(int(v) for v in attr(node, "split"))
    axis = split_axis(node, rank)
    outs = [shapes.get(o) for o in node.output]
    if any(o is None or len(o) <= axis for o in outs):
        return None
    return tuple(int(o[axis]) for o in outs)


def slice_entry(node: onnx.NodeProto, axis: int, rank: int, consts: Mapping[str, np.ndarray]) -> int | None:
    """Which entry of a Slice's starts/ends/steps names ``axis``; None when it does not slice that axis."""
    axes = _slice_field(node, 3, "axes", consts)
    if axes is None:
        starts = _slice_field(node, 1, "starts", consts)
        axes = list(range(len(starts))) if starts is not None else []
    hits = [k for k, a in enumerate(axes) if int(a) % max(rank, 1) == axis]
    return hits[0] if hits else None


def _slice_field(node: onnx.NodeProto, index: int, name: str, consts: Mapping[str, np.ndarray]) -> list[int] | None:
    if attr(node, name, None) is not None:  # opset < 10
        return [int(v) for v in attr(node, name)]
    if index < len(node.input) and node.input[index]:
        value = consts.get(node.input[index])
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    return None


def _clamp(value: int, width: int) -> int:
    if value < 0:
        value += width
    return min(max(value, 0), width)


def output_ranges(node: onnx.NodeProto, axis: int, width: int, shapes: Mapping[str, tuple[int, ...]],
                  consts: Mapping[str, np.ndarray]) -> tuple[Range, ...] | None:
    """The range of ``axis`` (``width`` long) each output of a Split/Slice ``node`` takes; None when unknown.

    Bounds computed at run time are accepted when the inferred shapes show the axis left whole."""
    ranges = _ranges(node, axis, width, shapes, consts)
    if ranges is None and all(len(shapes.get(o) or ()) > axis and shapes[o][axis] == width for o in node.output):
        return tuple((0, width) for _ in node.output)
    return ranges


def _ranges(node: onnx.NodeProto, axis: int, width: int, shapes: Mapping[str, tuple[int, ...]],
            consts: Mapping[str, np.ndarray]) -> tuple[Range, ...] | None:
    rank = len(shapes.get(node.input[0], ()))
    if node.op_type == "Split":
        if split_axis(node, rank) != axis:
            return tuple((0, width) for _ in node.output)
        sizes = split_sizes(node, shapes, consts)
        if sizes is None or sum(sizes) != width or len(sizes) != len(node.output):
            return None
        starts = np.cumsum((0, *sizes[:-1]))
        return tuple((int(s), int(s) + n) for s, n in zip(starts, sizes))
    entry = slice_entry(node, axis, rank, consts)
    if entry is None:
        return None if _slice_field(node, 1, "starts", consts) is None else ((0, width),)
    starts, ends = _slice_field(node, 1, "starts", consts), _slice_field(node, 2, "ends", consts)
    steps = _slice_field(node, 4, "steps", consts)
    if starts is None or ends is None or (steps is not None and steps[entry] != 1):
        return None
    start, stop = _clamp(starts[entry], width), _clamp(ends[entry], width)
    return ((start, max(start, stop)),)
