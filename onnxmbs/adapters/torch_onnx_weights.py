"""``apply_plan(model, plan, example, init="onnx", compact_onnx="c.onnx")``: the PyTorch module at the
plan's widths, carrying the weights of a compact ONNX file — typically one re-fitted by
``onnxmbs compact --reconstruct`` — so that fine-tuning starts from what the ONNX model computes.

The compact ONNX keeps the plan's conv node names, so each conv's weights come from the node the
adapter matched it to. The exporters fold a BatchNorm that directly follows a conv into that conv's
weights and bias; here the folded weights go into the conv and the BatchNorm becomes the identity
that carries the bias (γ = 1, running mean 0, running variance 1 − ε, β = the folded bias — or β = 0
when the conv has a bias of its own), so it can learn again in fine-tuning. Linear layers take the
weights of the Gemm/MatMul nodes, in order. The result is checked against the ONNX model in
onnxruntime on ``example_inputs``; a model the loader cannot carry over (another layer with weights,
a BatchNorm that was not folded) is one MBSError saying what, not a silently different model.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onnxmbs.adapters.onnx_weights import TOLERANCE, CompactWeights, relative_error, run_onnx
from onnxmbs.adapters.torch_trace import Trace, run_model
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)


def load_onnx_weights(model: nn.Module, trace: Trace, mapping: Mapping[str, str], compact_onnx: str | Path,
                      example_inputs: Any) -> None:
    """Copy the compact ONNX file's weights into ``model`` (already at its widths) in place, then check it."""
    weights = CompactWeights(compact_onnx)
    modules = dict(model.named_modules())
    bias_in_norm = _norms_after_convs(trace, compact_onnx)
    for layer, path in mapping.items():
        weight, bias = weights.conv(layer)
        _set_conv(modules[path], path, weight, bias, bias_in_norm.get(path), compact_onnx)
    _set_linears(trace, weights.linears(), compact_onnx)
    _check(model, weights, example_inputs)


def _norms_after_convs(trace: Trace, where: str | Path) -> dict[str, nn.Module]:
    """conv path -> the BatchNorm folded into it; any other BatchNorm cannot take the ONNX weights."""
    folded = {}
    for norm in trace.norms:
        if norm.source is None or trace.readers.get(norm.source) != 1:
            raise MBSError(f"BatchNorm '{norm.name}' does not directly follow a conv, so the exporter kept it as a "
                           f"node; init='onnx' carries over folded BatchNorms only — use init='inherit' ({where})")
        folded[norm.source] = norm.module
    return folded


def _tensor(value: np.ndarray, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(value, copy=True)).to(like.dtype), requires_grad=like.requires_grad)


def _set_conv(conv: nn.Module, path: str, weight: np.ndarray, bias: np.ndarray | None, norm: nn.Module | None,
              where: str | Path) -> None:
    if tuple(conv.weight.shape) != weight.shape:
        raise MBSError(f"conv '{path}' has weight shape {tuple(conv.weight.shape)}, {where} has {weight.shape} — "
                       "give the compact ONNX made from this plan")
    conv.weight = _tensor(weight, conv.weight)
    shift = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    if conv.bias is not None:
        conv.bias, shift = _tensor(shift, conv.bias), np.zeros_like(shift)
    if norm is not None:
        norm.weight = _tensor(np.ones_like(shift), norm.weight)
        norm.bias = _tensor(shift, norm.bias)
        norm.running_mean = torch.zeros_like(norm.running_mean)
        norm.running_var = torch.full_like(norm.running_var, 1.0 - norm.eps)
    elif np.any(shift):
        raise MBSError(f"conv '{path}' has no bias and no BatchNorm after it, but {where} gives it one — "
                       "init='onnx' cannot carry it over")


def _set_linears(trace: Trace, nodes: list[tuple[np.ndarray, np.ndarray | None]], where: str | Path) -> None:
    if len(nodes) != len(trace.linears):
        raise MBSError(f"the model has {len(trace.linears)} Linear layer(s), {where} {len(nodes)} Gemm/MatMul "
                       "node(s) with weights — init='onnx' matches them in order")
    for use, (weight, bias) in zip(trace.linears, nodes):
        m = use.module
        if tuple(m.weight.shape) != weight.shape:
            raise MBSError(f"Linear '{use.name}' has weight shape {tuple(m.weight.shape)}, {where} {weight.shape}")
        m.weight = _tensor(weight, m.weight)
        if m.bias is not None:
            m.bias = _tensor(bias if bias is not None else np.zeros(weight.shape[0], np.float32), m.bias)


def _check(model: nn.Module, weights: CompactWeights, example_inputs: Any) -> None:
    """The module computes what the ONNX model computes (onnxruntime, CPU) on ``example_inputs``."""
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    want = run_onnx(weights.proto, x.detach().cpu().numpy())
    err = relative_error(run_model(model, example_inputs)[0].detach().cpu().numpy(), want)
    if err > TOLERANCE:
        raise MBSError(f"with the weights of {weights.path} the PyTorch model differs from it by {err:.2g} (relative "
                       "max) — a layer with weights init='onnx' does not carry over; use init='inherit'")
    logger.info("init='onnx': weights of %s loaded (max relative difference %.2g)", weights.path, err)
