"""Reconstruction, part 5 — one layer's linear system, and the targets it is fitted to.

A :class:`LayerSystem` turns a Conv, MatMul or Gemm of the compact model into independent
least-squares blocks (one per conv group): its inherited weights as ``(blocks, dim + bias,
outputs)``, the rows of sampled inputs, and the new initializer values from a solution.
:func:`target` is what a layer is fitted to: the original's output at the sampled positions,
moved by the residual partner's error when the layer feeds a residual join.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxmbs.compact.fits import Fit, FitPlan
from onnxmbs.compact.sampling import (Positions, conv_geometry, conv_rows, conv_targets, matmul_rows, sample_flat,
                                      sample_positions)
from onnxmbs.graph.proto import attr


class LayerSystem:
    """One layer's linear system in the compact model: weights <-> (blocks, dim, outputs) solution."""

    def __init__(self, fit: Fit, node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto],
                 shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.fit, self.node = fit, node
        self.w_name = node.input[1]
        self.w = numpy_helper.to_array(inits[self.w_name])
        self.b_name = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        self.b = numpy_helper.to_array(inits[self.b_name]) if self.b_name else None
        self.x_shape, self.y_shape = shapes[fit.x], shapes[fit.y]
        if fit.op == "Conv":
            self._conv()
        else:
            self._matmul()

    # ---- conv
    def _conv(self) -> None:
        co, ci_g, kh, kw = self.w.shape
        self.groups = int(attr(self.node, "group", 1))
        self.geom = conv_geometry(self.node, self.x_shape[2:], self.y_shape[2:], (kh, kw))
        self.bias = self.b is not None
        self.dim, self.outputs = ci_g * kh * kw, co // self.groups

    def _matmul(self) -> None:
        self.trans = self.fit.op == "Gemm" and bool(attr(self.node, "transB", 0))
        self.alpha = float(attr(self.node, "alpha", 1.0)) if self.fit.op == "Gemm" else 1.0
        self.beta = float(attr(self.node, "beta", 1.0)) if self.fit.op == "Gemm" else 1.0
        k, n = self.w.shape[::-1] if self.trans else self.w.shape
        self.groups, self.dim, self.outputs = 1, k, n
        self.bias = self.b is not None and self.b.size == n
        self.offset = None if self.b is None or self.bias else self.beta * self.b.astype(np.float64)

    def w0(self) -> np.ndarray:
        """The inherited weights as (blocks, dim + bias, outputs)."""
        g, d, o = self.groups, self.dim, self.outputs
        if self.fit.op == "Conv":
            w = self.w.reshape(g, o, d).transpose(0, 2, 1)
            b = self.b.reshape(g, 1, o) if self.bias else None
        else:
            w = self.alpha * (self.w.T if self.trans else self.w)[None]
            b = self.beta * self.b.reshape(1, 1, o) if self.bias else None
        w = w.astype(np.float64)
        return np.concatenate([w, b.astype(np.float64)], axis=1) if b is not None else w

    def sample(self, rng: np.random.Generator, images: int, positions: int) -> Positions:
        if self.fit.op == "Conv":
            return sample_positions(rng, images, self.y_shape[2], self.y_shape[3], positions)
        rows = int(np.prod(self.x_shape[1:-1])) if len(self.x_shape) > 2 else 1
        return sample_flat(rng, images, rows, positions)

    def tap(self, shape: tuple[int, ...]) -> int | None:
        """How :func:`onnxmbs.graph.edit.gather_at` samples a tensor of this layer's output ``shape`` as
        :meth:`values` does: None for an NCHW conv output, else its features (last axis)."""
        return None if self.fit.op == "Conv" else int(shape[-1])

    def at(self, where: Positions) -> np.ndarray:
        """``where`` as the gather's indices: (image, y, x) for a conv, (image, row) otherwise."""
        parts = (where.image, where.a, where.b) if self.fit.op == "Conv" else (where.image, where.a)
        return np.stack(parts, axis=1).astype(np.int64)

    def values(self, tensor: np.ndarray, where: Positions) -> np.ndarray:
        return conv_targets(tensor, where) if self.fit.op == "Conv" else matmul_rows(tensor, where)

    def rows(self, x: np.ndarray, target: np.ndarray, where: Positions) -> tuple[np.ndarray, np.ndarray]:
        n, g = len(where), self.groups
        if self.fit.op == "Conv":
            xr = conv_rows(x, self.geom, where).reshape(n, g, self.dim)
        else:
            xr = matmul_rows(x, where).reshape(n, 1, self.dim)
            if self.offset is not None:
                target = target - np.broadcast_to(self.offset, target.shape)
        if self.bias:
            xr = np.concatenate([xr, np.ones((n, g, 1), xr.dtype)], axis=2)
        return xr, target.reshape(n, g, self.outputs)

    def weights(self, sol: np.ndarray) -> dict[str, np.ndarray]:
        """New initializer values (same names, shapes and dtypes) from the solution."""
        d = self.dim
        out: dict[str, np.ndarray] = {}
        if self.fit.op == "Conv":
            out[self.w_name] = sol[:, :d, :].transpose(0, 2, 1).reshape(self.w.shape)
            if self.bias:
                out[self.b_name] = sol[:, d, :].reshape(self.b.shape)
        else:
            w = sol[0, :d, :] / self.alpha
            out[self.w_name] = w.T if self.trans else w
            if self.bias:
                out[self.b_name] = (sol[0, d, :] / self.beta).reshape(self.b.shape)
        return {k: v.astype(self.w.dtype if k == self.w_name else self.b.dtype) for k, v in out.items()}


def kept(fit: Fit, values: np.ndarray) -> np.ndarray:
    """The channels of ``values`` (rows, channels) the compact layer keeps."""
    return values if fit.out_pos is None else np.take(values, fit.out_pos, axis=1)


def target(fit: Fit, layer: LayerSystem, y: np.ndarray, other: np.ndarray | None, comp: Mapping[str, np.ndarray],
            where: Positions) -> np.ndarray:
    """The original output ``y`` (kept channels, sampled), moved by the residual partner's error when there is one
    (``other``: the partner's original values at the same positions and channels)."""
    y = y.astype(np.float64)
    if fit.join is None:
        return y
    slope = fit.join.slope if fit.out_pos is None else fit.join.slope[fit.out_pos]
    gap = other - layer.values(comp[fit.join.other], where)
    safe = np.abs(slope) > 1e-12
    return y + np.where(safe, gap / np.where(safe, slope, 1.0), 0.0)


def usable(plan: FitPlan, model: onnx.ModelProto, shapes) -> tuple[list[LayerSystem], list[tuple[str, str]]]:
    """The fits whose weights are plain initializers read by that layer alone."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for t in node.input:
            uses[t] = uses.get(t, 0) + 1
    by_output = {n.output[0]: n for n in model.graph.node if n.output}
    layers, skipped = [], list(plan.skipped)
    for fit in plan.fits:
        node = by_output.get(fit.y)
        tensors = [] if node is None else [t for t in node.input[1:] if t]
        if node is None or any(t not in inits or uses.get(t, 0) > 1 for t in tensors):
            skipped.append((fit.name, "its weights are shared with another layer or not stored as initializers"))
            continue
        layers.append(LayerSystem(fit, node, inits, shapes))
    return layers, skipped
