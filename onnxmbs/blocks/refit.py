"""``blocks --reconstruct``: after the blocks are removed, re-fit the layers that read each removed
block's join, so the shallow model's values there match the original's as closely as least squares
allows — the same normal-equation loop as ``compact --reconstruct``
(:func:`onnxmbs.compact.reconstruct.refit`).

Which layers: from every node that read a removed join (in the shallow model they read the
shortcut instead), follow the data forward through single-input nodes without weights
(activations, pooling, Flatten, Reshape by a constant shape) and through a Concat (YOLO's C2f gathers
its bottlenecks' outputs in one) to the first Conv, Gemm or MatMul on each path; those are re-fitted,
their output matched to the same tensor of the original model. A path that meets another node with
several inputs (the next residual Add) stops there: the error the removal left on that path is not
absorbed. Layers are fitted in graph order, one wave each, so a later layer is
fitted on the inputs the earlier fits produce.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnx

from onnxmbs.blocks.discover import Block
from onnxmbs.compact.fits import Fit, FitPlan
from onnxmbs.compact.reconstruct import Reconstruction, ReconstructOptions, refit

logger = logging.getLogger(__name__)

WEIGHTED = ("Conv", "Gemm", "MatMul")


def fits_after(shallow: onnx.ModelProto, original: onnx.ModelProto, removed: Sequence[Block]) -> FitPlan:
    """The layers to re-fit: the first weighted layer on every path from each removed block's shortcut
    (where its join's readers now read), in graph order."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(shallow.graph.node):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    readers = _join_readers(original, removed)
    static = {t.name for t in shallow.graph.initializer} | {
        o for n in shallow.graph.node if n.op_type == "Constant" for o in n.output}
    found: set[int] = set()
    for block in removed:
        stack = [i for i in consumers.get(block.shortcut, ()) if shallow.graph.node[i].name in readers]
        seen: set[int] = set()
        while stack:
            i = stack.pop()
            node = shallow.graph.node[i]
            if i in seen:
                continue
            seen.add(i)
            if node.op_type in WEIGHTED:
                found.add(i)
            elif node.output and (node.op_type == "Concat" or len([t for t in node.input if t and t not in static]) == 1):
                stack.extend(consumers.get(node.output[0], ()))
    order = sorted(found)
    fits = tuple(Fit(name=shallow.graph.node[i].name or shallow.graph.node[i].output[0],
                     op=shallow.graph.node[i].op_type, x=shallow.graph.node[i].input[0],
                     y=shallow.graph.node[i].output[0], out_pos=None, join=None, wave=w)
                 for w, i in enumerate(order))
    return FitPlan(fits=fits, skipped=())


def _join_readers(original: onnx.ModelProto, removed: Sequence[Block]) -> set[str]:
    """Names of the original's nodes that read a removed join's output."""
    outputs = {n.name: n.output[0] for n in original.graph.node if n.output}
    joins = {outputs[b.join] for b in removed if b.join in outputs}
    return {n.name for n in original.graph.node if any(t in joins for t in n.input)}


def reconstruct_shallow(shallow: onnx.ModelProto, original: onnx.ModelProto, removed: Sequence[Block],
                        loaded: Any, options: ReconstructOptions) -> Reconstruction:
    """``shallow`` with the layers after each removed block re-fitted to ``original`` on ``options.data``."""
    plan = fits_after(shallow, original, removed)
    if not plan.fits:
        logger.warning("blocks --reconstruct: no Conv/Gemm/MatMul reads a removed block's join (directly or through "
                       "activations, pooling or a Concat) — nothing to re-fit")
    return refit(plan, original, shallow, loaded, options)
