"""Compact surgery, part 3 — the new value of every constant input, one rule per op type.

Given the :class:`~onnxmbs.compact.index.Layout` of every channel tensor, each rule cuts the
constants a node reads along the axes that carry channels (the registry, :mod:`onnxmbs.ops`, names
each op's rule):

* Conv: weight rows by the output's kept channels, columns by the input's (depthwise: rows
  only, and ``group`` becomes the new channel count; grouped: per group, exact when the kept
  channels stay in their groups, else reported as inexact); bias by the output.
* Gemm / MatMul: the input-feature axis by the input's kept channels, the output axis by
  the output's (a frozen classifier keeps its outputs); Gemm's C along its last axis.
* BatchNormalization / InstanceNormalization: scale, bias, mean, var.
* Element-wise ops (Add, Sub, Mul, Div, PRelu, Max, Min, Where, Pow, ...): a constant whose
  broadcast axis lines up with the channel axis (tf2onnx's unfused BatchNorm, SE scales).
* Split / Slice along the channel axis: the sizes (a ``split`` input or attribute, added when the
  original split into equal parts) or the channel entry of ``starts``/``ends``.
* Reshape: the entries of its shape constant that name a channel count (a channel shuffle's
  ``(s, C/s)`` or a classifier's flatten), also when the shape is a Concat of constant pieces
  and dynamic batch (torch exporters).

Edits are recorded per use ``(node index, input index)``; :mod:`onnxmbs.compact.graph` turns
them into initializers, copying a constant that several uses need cut differently.
``weights="random"`` then re-draws Conv/Gemm/MatMul weights (He-normal, fan-in, seeded),
zeroes their biases and resets BatchNorm to the identity; other per-channel constants (e.g.
tf2onnx's unfused BatchNorm as Mul/Add) keep their inherited, cut values.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxmbs.compact.index import Layout, compact_range, compact_shape
from onnxmbs.errors import MBSError
from onnxmbs.graph.proto import attr
from onnxmbs.graph.slicing import output_ranges, slice_entry
from onnxmbs.ops.registry import kind

Use = tuple[int, int]  # (node index, input index)


@dataclass
class Edits:
    values: dict[Use, np.ndarray] = field(default_factory=dict)
    attrs: dict[int, dict[str, int | list[int]]] = field(default_factory=dict)
    inexact: list[str] = field(default_factory=list)
    added: dict[Use, np.ndarray] = field(default_factory=dict)  # new constant inputs (sizes, bounds)
    dropped: dict[int, set[str]] = field(default_factory=dict)  # attributes to remove (``num_outputs``)


@dataclass(frozen=True)
class Ctx:
    layouts: Mapping[str, Layout]
    consts: Mapping[str, np.ndarray]  # initializers, Constant outputs and Identity-of-constant outputs
    shapes: Mapping[str, tuple[int, ...]]
    producer: Mapping[str, int]  # tensor -> index of the node writing it
    nodes: list  # graph.node
    opset: int = 17  # of the default domain
    static: Mapping[str, np.ndarray] | None = None  # consts plus folded shape computations (graph/folding.py)


def _pos(ctx: Ctx, tensor: str, size: int) -> np.ndarray:
    lay = ctx.layouts.get(tensor)
    return lay.pos if lay is not None and lay.dims is None else np.arange(size)


def _set(edits: Edits, ctx: Ctx, use: Use, value: np.ndarray) -> None:
    old = ctx.consts[ctx.nodes[use[0]].input[use[1]]]
    if value.shape != old.shape or not np.array_equal(value, old):
        edits.values[use] = value


def _need_const(ctx: Ctx, node, name: str, index: int, changed: bool) -> np.ndarray | None:
    value = ctx.consts.get(node.input[index]) if index < len(node.input) and node.input[index] else None
    if value is None and changed:
        raise MBSError(f"{node.op_type} '{name}' reads its weights from a computed tensor '{node.input[index]}' "
                       "while its channels change — onnxmbs cuts constant weights only; fold constants "
                       "(e.g. with onnxsim) or freeze this group")
    return value


def grouped_weight(w: np.ndarray, pos_out: np.ndarray, pos_in: np.ndarray, g: int, name: str) -> tuple[np.ndarray, bool]:
    """A grouped conv's weight cut to the kept output and input channels (the PyTorch adapter uses it too), and
    whether it is exact: each compact filter reads the input channels of its compact group at the same offsets
    as in the original; when the kept channels cross the original groups, the approximation is reported."""
    out_n, in_per = w.shape[0], w.shape[1]
    c_out, c_in = len(pos_out), len(pos_in)
    if c_out % g or c_in % g:
        raise MBSError(f"grouped Conv '{name}' (group={g}) would get {c_in} input / {c_out} output channels, "
                       f"not multiples of {g} — make the compact widths multiples of {g} (--round-to {g})")
    rows = np.repeat(np.arange(g), c_out // g)  # compact group of each compact output channel
    cols = pos_in.reshape(g, c_in // g)[rows]  # original input channels read by each compact filter
    exact = bool(np.all(cols // in_per == (pos_out // (out_n // g))[:, None]))
    return w[pos_out[:, None], cols % in_per], exact


def _shape(ctx: Ctx, tensor: str) -> tuple[int, ...] | None:
    value = ctx.consts.get(tensor)
    return tuple(value.shape) if value is not None else ctx.shapes.get(tensor)


def conv_rule(i: int, node, name: str, ctx: Ctx, edits: Edits) -> None:
    w_shape = _shape(ctx, node.input[1])
    if w_shape is None:
        raise MBSError(f"Conv '{name}' has a weight of unknown shape — run onnx shape inference or onnxsim first")
    g = int(attr(node, "group", 1))
    pos_out = _pos(ctx, node.output[0], w_shape[0])
    pos_in = _pos(ctx, node.input[0], w_shape[1] * g)
    changed = len(pos_out) < w_shape[0] or len(pos_in) < w_shape[1] * g
    w = _need_const(ctx, node, name, 1, changed)
    if w is None:
        return
    if g == 1:
        new = w[pos_out][:, pos_in]
    elif g == w_shape[1] * g and w_shape[1] == 1 and w_shape[0] == g:  # depthwise
        new = w[pos_out]
        if len(pos_out) != g:
            edits.attrs.setdefault(i, {})["group"] = len(pos_out)
    else:
        new, exact = grouped_weight(w, pos_out, pos_in, g, name)
        if not exact:
            edits.inexact.append(name)
    _set(edits, ctx, (i, 1), new)
    bias = _need_const(ctx, node, name, 2, changed) if len(node.input) > 2 and node.input[2] else None
    if bias is not None:
        _set(edits, ctx, (i, 2), bias[pos_out])


def gemm_rule(i: int, node, name: str, ctx: Ctx, edits: Edits) -> None:
    w_shape = _shape(ctx, node.input[1])
    if w_shape is None or len(w_shape) < 2:
        return
    trans_b = node.op_type == "Gemm" and attr(node, "transB", 0)
    k_axis, n_axis = (len(w_shape) - 1, len(w_shape) - 2) if trans_b else (len(w_shape) - 2, len(w_shape) - 1)
    pos_k = _pos(ctx, node.input[0], w_shape[k_axis])
    pos_n = _pos(ctx, node.output[0], w_shape[n_axis])
    changed = len(pos_k) < w_shape[k_axis] or len(pos_n) < w_shape[n_axis]
    if changed and node.op_type == "Gemm" and attr(node, "transA", 0):
        raise MBSError(f"Gemm '{name}' has transA=1 and its input features change — onnxmbs cannot cut it; "
                       "freeze this group")
    w = _need_const(ctx, node, name, 1, changed)
    if w is None:
        return
    _set(edits, ctx, (i, 1), np.take(np.take(w, pos_k, axis=k_axis), pos_n, axis=n_axis))
    c = ctx.consts.get(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 else None
    if c is not None and c.ndim >= 1 and c.shape[-1] == w_shape[n_axis] > 1:
        _set(edits, ctx, (i, 2), np.take(c, pos_n, axis=-1))


def norm_rule(i: int, node, name: str, ctx: Ctx, edits: Edits, *, statistics: bool = False) -> None:
    """Scale and bias (InstanceNormalization), and the running mean and variance (``statistics``: BatchNorm)."""
    lay = ctx.layouts.get(node.input[0])
    if lay is None or lay.full:
        return
    if lay.axis != 1 or lay.dims is not None:
        raise MBSError(f"{node.op_type} '{name}' normalises axis 1 but its channels lie on axis {lay.axis} — "
                       "report the model")
    last = 5 if statistics else 3
    for j in range(1, min(last, len(node.input))):
        value = _need_const(ctx, node, name, j, True)
        _set(edits, ctx, (i, j), value[lay.pos])


def elementwise_rule(i: int, node, name: str, ctx: Ctx, edits: Edits) -> None:
    lay = ctx.layouts.get(node.output[0])
    out_shape = ctx.shapes.get(node.output[0])
    if lay is None or lay.full or out_shape is None:
        return
    for j, tensor in enumerate(node.input):
        value = ctx.consts.get(tensor)
        if value is None or value.size <= 1:
            continue
        axis = lay.axis - (len(out_shape) - value.ndim)
        span = value.shape[max(axis, 0): axis + (1 if lay.dims is None else 2)] if axis >= 0 else ()
        if all(d == 1 for d in span):
            continue
        if lay.dims is not None or value.shape[axis] != len(lay.ids):
            raise MBSError(f"{node.op_type} '{name}' has a constant '{tensor}' of shape {value.shape} along "
                           "resized channels that onnxmbs cannot cut — report the model")
        _set(edits, ctx, (i, j), np.take(value, lay.pos, axis=axis))


def _shape_pieces(ctx: Ctx, node) -> list[tuple[Use | None, int]]:
    """(use, length) of the pieces that make up a Reshape's shape input; use None = computed at run time.

    A constant shape is one piece; a Concat of constants and run-time values (dynamic batch,
    ``Shape``-derived sizes) is several. Computed pieces are left alone: they follow the compact
    tensors by construction, and :func:`onnxmbs.compact.check.verify` checks every tensor's shape.
    """
    src = node.input[1]
    if src in ctx.consts:
        return [(None, 0)] if ctx.consts[src].ndim != 1 else [("self", len(ctx.consts[src]))]
    j = ctx.producer.get(src)
    while j is not None and ctx.nodes[j].op_type in ("Cast", "Identity"):  # tf2onnx: Cast(Concat(...))
        j = ctx.producer.get(ctx.nodes[j].input[0])
    cat = ctx.nodes[j] if j is not None else None
    if cat is None or cat.op_type != "Concat":
        return []
    return [((j, k) if t in ctx.consts else None, int(ctx.shapes.get(t, (1,))[0])) for k, t in enumerate(cat.input)]


def reshape_rule(i: int, node, name: str, ctx: Ctx, edits: Edits) -> None:
    lay, orig = ctx.layouts.get(node.output[0]), ctx.shapes.get(node.output[0])
    if lay is None or orig is None:
        return
    new = compact_shape(lay, orig)
    changed = [p for p in range(len(orig)) if orig[p] != new[p]]
    start = 0
    for use, length in _shape_pieces(ctx, node) if changed else ():
        mine = [p for p in changed if start <= p < start + length]
        if mine and use is not None:
            _reshape_piece(ctx, edits, (i, 1) if use == "self" else use, mine, start, orig, new, name)
        start += length


def _reshape_piece(ctx: Ctx, edits: Edits, use: Use, positions: list[int], start: int,
                   orig: tuple[int, ...], new: tuple[int, ...], name: str) -> None:
    tensor = ctx.nodes[use[0]].input[use[1]]
    value = np.array(edits.values.get(use, ctx.consts[tensor]), copy=True)
    flat = value.reshape(-1)
    for p in positions:
        v = int(flat[p - start])
        if v == orig[p]:
            flat[p - start] = new[p]
        elif v not in (-1, 0):
            raise MBSError(f"Reshape '{name}' has shape entry {v} where {orig[p]} channels were expected — "
                           "report the model")
    _set(edits, ctx, use, value)


def split_rule(i: int, node, name: str, ctx: Ctx, edits: Edits) -> None:
    """Split / Slice along the channel axis: sizes or bounds for the compact widths."""
    lay = ctx.layouts.get(node.input[0])
    outs = [ctx.layouts.get(o) for o in node.output]
    if lay is None or lay.full or any(o is None for o in outs):
        return
    values = ctx.static if ctx.static is not None else ctx.consts
    ranges = output_ranges(node, lay.axis, len(lay.ids), ctx.shapes, values)
    if all(r == (0, len(lay.ids)) for r in ranges):
        return
    if node.op_type == "Split":
        _split_sizes(i, node, ctx, edits, np.array([len(o.pos) for o in outs], np.int64))
        return
    (start, stop), = ranges
    kept = compact_range(node, name, lay, start, stop)
    entry = slice_entry(node, lay.axis, len(ctx.shapes.get(node.input[0], ())), values)
    for j, key, value in ((1, "starts", kept.start), (2, "ends", kept.stop)):
        if attr(node, key, None) is not None:  # opset < 10
            edits.attrs.setdefault(i, {})[key] = [*attr(node, key)[:entry], value, *attr(node, key)[entry + 1:]]
            continue
        new = np.array(values[node.input[j]], copy=True)
        new.reshape(-1)[entry] = value
        if node.input[j] in ctx.consts:
            _set(edits, ctx, (i, j), new)
        else:  # computed from the shape (TorchScript's chunk): a constant of the compact bound instead
            edits.added[(i, j)] = new.astype(np.int64)


def _split_sizes(i: int, node, ctx: Ctx, edits: Edits, sizes: np.ndarray) -> None:
    if len(node.input) > 1 and node.input[1]:
        _set(edits, ctx, (i, 1), sizes)
    elif attr(node, "split", None) is not None or ctx.opset < 13:
        edits.attrs.setdefault(i, {})["split"] = [int(v) for v in sizes]
    else:  # equal parts (opset 13-17) or num_outputs (18): the compact parts need explicit sizes
        edits.added[(i, 1)] = sizes
        if attr(node, "num_outputs", None) is not None:
            edits.dropped.setdefault(i, set()).add("num_outputs")


def batchnorm_rule(i: int, node, name: str, ctx: Ctx, edits: Edits) -> None:
    norm_rule(i, node, name, ctx, edits, statistics=True)


Rule = Callable[[int, onnx.NodeProto, str, Ctx, Edits], None]
# the kinds of :attr:`onnxmbs.ops.rules.OpRules.surgery`
SURGERY_KINDS: dict[str, Rule] = {
    "conv": conv_rule, "gemm": gemm_rule, "batchnorm": batchnorm_rule, "norm": norm_rule,
    "elementwise": elementwise_rule, "reshape": reshape_rule, "split": split_rule,
}


def surgery_rule(op: str) -> Rule | None:
    """The rule that cuts the constants of an ``op`` node; None when it has none to cut."""
    rule = kind(op, "surgery")
    return SURGERY_KINDS[rule] if rule else None


# ---------------------------------------------------------------- fresh weights
def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, dtype) -> np.ndarray:
    return (rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in, 1))).astype(dtype)


def _fresh(node, j: int, value: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """The re-initialised value of input ``j`` of ``node``, or None to keep it."""
    rule = kind(node.op_type, "surgery")
    if rule == "batchnorm" and 1 <= j <= 4:
        return (np.ones if j in (1, 4) else np.zeros)(value.shape, value.dtype)
    if rule not in ("conv", "gemm") or value.ndim == 0 or not np.issubdtype(value.dtype, np.floating):
        return None
    if j == 2:  # Conv's and Gemm's bias (MatMul has two inputs)
        return np.zeros(value.shape, value.dtype)
    if j != 1 or value.ndim < 2:
        return None
    if rule == "conv":
        fan_in = math.prod(value.shape[1:])
    else:  # transB is Gemm's only
        fan_in = value.shape[-1] if attr(node, "transB", 0) else value.shape[-2]
    return _he(rng, value.shape, fan_in, value.dtype)


def reinitialise(ctx: Ctx, edits: Edits, *, seed: int) -> None:
    """``weights="random"``: He-normal weights, zero biases, identity BatchNorm (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    drawn: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
    for i, node in enumerate(ctx.nodes):
        for j, tensor in enumerate(node.input):
            if tensor not in ctx.consts:
                continue
            value = edits.values.get((i, j), ctx.consts[tensor])
            key = (tensor, value.shape)
            if key not in drawn:
                fresh = _fresh(node, j, value, rng)
                if fresh is None:
                    continue
                drawn[key] = fresh
            edits.values[(i, j)] = drawn[key]
