"""Resizing a traced PyTorch module to a resolved plan (:func:`onnxmbs.adapters.torch_adapter.resolve`):
every conv, BatchNorm, Linear, LayerNorm and per-channel parameter the trace recorded, cut to its
compact channels in place (the module is the adapter's copy). Grouped convs with inherited weights
are cut by the surgery's own rule (:func:`onnxmbs.compact.surgery.grouped_weight`), so the module
computes what the compact ONNX computes.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from onnxmbs.adapters.planview import Layout, Resolution
from onnxmbs.adapters.torch_uses import ConvUse, Trace
from onnxmbs.compact.surgery import grouped_weight
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)


def _index(layout: Layout | None, res: Resolution, size: int) -> tuple[int, torch.Tensor]:
    if layout is None:
        return size, torch.arange(size)
    idx = torch.from_numpy(layout.channel_index(res.keep, res.channels))
    return len(idx), idx


def _param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is not None:
        old = getattr(module, name)
        setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))


def _resize_conv(use: ConvUse, res: Resolution, *, inherit: bool) -> None:
    m = use.module
    n_in, idx_in = _index(use.in_layout, res, m.in_channels)
    n_out, idx_out = _index(use.out_layout, res, m.out_channels)
    if (n_in, n_out) == (m.in_channels, m.out_channels):
        return
    if use.depthwise:
        groups = n_in
    elif m.groups > 1 and (n_in % m.groups or n_out % m.groups):
        raise MBSError(f"grouped conv '{use.name}' (groups={m.groups}) cannot go {m.in_channels}->{m.out_channels} to "
                       f"{n_in}->{n_out} channels — plan with the widths rounded to the group count "
                       f"(--round-to {m.groups})")
    else:
        groups = m.groups
    w = m.weight.detach()
    if use.depthwise:
        w = w[idx_out]
    elif groups == 1:
        w = w[idx_out][:, idx_in]
    elif inherit:  # the rule compact's surgery uses, so both keep the same weights
        cut, exact = grouped_weight(w.numpy(), idx_out.numpy(), idx_in.numpy(), groups, use.name)
        w = torch.from_numpy(np.ascontiguousarray(cut))
        if not exact:
            logger.warning("inherited weights of grouped conv '%s' are approximate (kept channels cross its groups), "
                           "as in the compact ONNX — retrain or fine-tune", use.name)
    if tuple(w.shape[:2]) != (n_out, n_in // groups):  # grouped, scratch only: reset_parameters fills it
        w = w.new_empty((n_out, n_in // groups, *w.shape[2:]))
    _param(m, "weight", w)
    _param(m, "bias", None if m.bias is None else m.bias.detach()[idx_out])
    m.in_channels, m.out_channels, m.groups = n_in, n_out, groups


def resize(trace: Trace, res: Resolution, *, inherit: bool) -> None:
    """Resize every traced conv, BatchNorm and Linear in place (they belong to the copy)."""
    for use in trace.convs:
        _resize_conv(use, res, inherit=inherit)
    done: dict[str, Layout] = {}
    for norm in trace.norms:
        if done.setdefault(norm.name, norm.layout) != norm.layout:
            raise MBSError(f"BatchNorm '{norm.name}' normalises differently tied channels in two places — "
                           "give each call its own BatchNorm module")
        m = norm.module
        n, idx = _index(norm.layout, res, m.num_features)
        if n != m.num_features:
            _param(m, "weight", None if m.weight is None else m.weight.detach()[idx])
            _param(m, "bias", None if m.bias is None else m.bias.detach()[idx])
            for buf in ("running_mean", "running_var"):
                if getattr(m, buf, None) is not None:
                    setattr(m, buf, getattr(m, buf)[idx].clone())
            m.num_features = n
    for lin in trace.linears:
        m = lin.module
        idx = torch.from_numpy(lin.layout.feature_index(res.keep, res.channels))
        if len(idx) != m.in_features:
            _param(m, "weight", m.weight.detach()[:, idx])
            m.in_features = len(idx)
        n, out = _index(lin.out_layout, res, m.out_features)
        if n != m.out_features:
            _param(m, "weight", m.weight.detach()[out])
            _param(m, "bias", None if m.bias is None else m.bias.detach()[out])
            m.out_features = n
    _resize_channelwise(trace, res)


def _resize_channelwise(trace: Trace, res: Resolution) -> None:
    """LayerNorms over the channels and per-channel parameters (ConvNeXt's layer scale), cut with the channels."""
    for use in trace.layer_norms:
        m = use.module
        n, idx = _index(use.layout, res, m.normalized_shape[0])
        if n != m.normalized_shape[0]:
            _param(m, "weight", None if m.weight is None else m.weight.detach()[idx])
            _param(m, "bias", None if m.bias is None else m.bias.detach()[idx])
            m.normalized_shape = (n,)
    for use in trace.scales:
        value = getattr(use.module, use.param)
        n, idx = _index(use.layout, res, value.shape[use.dim])
        if n != value.shape[use.dim]:
            _param(use.module, use.param, value.detach().index_select(use.dim, idx))


def reinitialise(model: nn.Module) -> None:
    """From scratch: every submodule with ``reset_parameters`` gets PyTorch's default init."""
    for m in model.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
