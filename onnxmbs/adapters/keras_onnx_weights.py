"""``apply_plan(keras_model, plan, init="onnx", compact_onnx="c.onnx")``: the Keras model at the plan's
widths, carrying the weights of a compact ONNX file (typically re-fitted by ``compact --reconstruct``).

Each Conv2D / DepthwiseConv2D takes the weights of the ONNX conv node it was matched to (ONNX
``[O, I/g, kh, kw]`` laid out as Keras' ``[kh, kw, I, O]``, depthwise ``[kh, kw, C, 1]``); a
BatchNormalization tf2onnx folded into its conv becomes the identity that carries the folded bias
(γ = 1, moving mean 0, moving variance 1 − ε, β = the bias, or 0 when the conv has a bias of its own);
Dense layers take the Gemm/MatMul weights in order. The result is checked against the ONNX model in
onnxruntime; a layer the loader cannot carry over is one MBSError.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.adapters.onnx_weights import TOLERANCE, CompactWeights, relative_error, run_onnx
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)


def load_onnx_weights_keras(model: Any, uses: list[Any], mapping: Mapping[str, str],
                            compact_onnx: str | Path) -> None:
    """Set ``model``'s (already at its widths) conv, BatchNorm and Dense weights from ``compact_onnx``; check it."""
    weights = CompactWeights(compact_onnx)
    norms = {u.source: u.name for u in uses if u.kind == "norm" and u.source}
    onnx_of = {name: layer for layer, name in mapping.items()}
    for use in uses:
        if use.kind == "norm" and not use.source:
            _set_affine_norm(model.get_layer(use.name), model, onnx_of, weights)
    for layer, name in mapping.items():
        weight, bias = weights.conv(layer)
        _set_conv(model.get_layer(name), weight, bias, norms.get(name), model, compact_onnx)
    dense = [u.name for u in uses if u.kind == "dense"]
    nodes = weights.linears()
    if len(nodes) != len(dense):
        raise MBSError(f"the model has {len(dense)} Dense layer(s), {compact_onnx} {len(nodes)} Gemm/MatMul node(s) "
                       "with weights — init='onnx' matches them in order")
    for name, (weight, bias) in zip(dense, nodes):
        layer = model.get_layer(name)
        _set(layer, [weight.T, *([bias if bias is not None else np.zeros(weight.shape[0])] if layer.use_bias else [])],
             compact_onnx)
    _check(model, weights)


def _set(layer: Any, values: list[np.ndarray], where: str | Path) -> None:
    current = layer.get_weights()
    if [tuple(v.shape) for v in current] != [tuple(v.shape) for v in values]:
        raise MBSError(f"layer '{layer.name}' has weights {[tuple(v.shape) for v in current]}, {where} gives "
                       f"{[tuple(v.shape) for v in values]} — give the compact ONNX made from this plan")
    layer.set_weights([np.asarray(v, dtype=c.dtype) for v, c in zip(values, current)])


def _set_conv(layer: Any, weight: np.ndarray, bias: np.ndarray | None, norm: str | None, model: Any,
              where: str | Path) -> None:
    depthwise = type(layer).__name__ == "DepthwiseConv2D"
    kernel = weight.transpose(2, 3, 0, 1) if depthwise else weight.transpose(2, 3, 1, 0)
    shift = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    values = [kernel]
    if layer.use_bias:
        values, shift = [kernel, shift], np.zeros_like(shift)
    _set(layer, values, where)
    if norm is not None:
        bn = model.get_layer(norm)
        one = np.ones_like(shift)
        by_name = {"gamma": one, "beta": shift, "moving_mean": np.zeros_like(shift),
                   "moving_variance": np.full_like(shift, 1.0 - bn.epsilon)}
        _set(bn, [by_name[w.name.split("/")[-1].split(":")[0]] for w in bn.weights], where)
    elif np.any(shift):
        raise MBSError(f"conv '{layer.name}' has no bias and no BatchNormalization after it, but {where} gives it one "
                       "— init='onnx' cannot carry it over")


def _set_affine_norm(bn: Any, model: Any, onnx_of: Mapping[str, str], weights: CompactWeights) -> None:
    """A BatchNormalization after a depthwise conv: tf2onnx writes it as per-channel Mul/Add after that conv;
    the BatchNorm takes their scale and shift (moving mean 0, variance 1 − ε)."""
    history = getattr(bn.input, "_keras_history", None)
    source = getattr(history[0] if history else None, "name", None)
    layer = onnx_of.get(source)
    if layer is None:
        raise MBSError(f"BatchNormalization '{bn.name}' does not follow a conv of the plan — init='onnx' cannot carry "
                       f"it over; use init='inherit' ({weights.path})")
    scale, shift = weights.affine_after(layer)
    by_name = {"gamma": scale, "beta": shift, "moving_mean": np.zeros_like(scale),
               "moving_variance": np.full_like(scale, 1.0 - bn.epsilon)}
    _set(bn, [by_name[w.name.split("/")[-1].split(":")[0]] for w in bn.weights], weights.path)


def _check(model: Any, weights: CompactWeights) -> None:
    x = np.random.default_rng(0).random((2, *model.inputs[0].shape[1:]), dtype=np.float32)
    want = run_onnx(weights.proto, x)
    err = relative_error(np.asarray(model(x, training=False)), want)
    if err > TOLERANCE:
        raise MBSError(f"with the weights of {weights.path} the Keras model differs from it by {err:.2g} (relative "
                       "max) — a layer with weights init='onnx' does not carry over; use init='inherit'")
    logger.info("init='onnx': weights of %s loaded (max relative difference %.2g)", weights.path, err)
