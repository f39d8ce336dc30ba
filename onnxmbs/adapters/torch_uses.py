"""What the PyTorch dependency trace (:mod:`onnxmbs.adapters.torch_trace`) records: one use per layer kind.

A :class:`Tag` is the channel layout of one traced tensor; a :class:`Trace` holds every use the forward
pass revealed, which the adapter (:mod:`onnxmbs.adapters.torch_adapter`) resolves against a plan and
resizes.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from torch import nn

from onnxmbs.adapters.planview import ChannelBook, Layout


@dataclass(frozen=True)
class Tag:
    layout: Layout
    axis: int
    split: int = 0  # > 0 while a channel shuffle has the channel axis viewed as (split, C / split)
    swapped: bool = False  # ... and its two halves transposed


@dataclass(frozen=True)
class ConvUse:
    name: str
    module: nn.Module
    in_layout: Layout | None
    out_layout: Layout
    groups: int
    depthwise: bool
    out_hw: tuple[int, ...]


@dataclass(frozen=True)
class NormUse:
    name: str
    module: nn.Module
    layout: Layout
    source: str | None  # the conv whose output it reads directly (an exporter folds it into that conv)


@dataclass(frozen=True)
class LinearUse:
    name: str
    module: nn.Module
    layout: Layout
    out_layout: Layout | None = None  # its output features along the last axis (ConvNeXt's channels-last Linear)


@dataclass(frozen=True)
class LayerNormUse:
    """``F.layer_norm`` over the channels alone (the last axis of a channels-last tensor), by an nn.LayerNorm."""

    name: str
    module: nn.Module
    layout: Layout


@dataclass(frozen=True)
class ScaleUse:
    """A module's per-channel parameter multiplied or added element-wise (ConvNeXt's layer scale γ)."""

    name: str
    module: nn.Module
    param: str
    layout: Layout
    dim: int  # the parameter's axis that lines up with the channels


@dataclass
class Trace(ChannelBook):
    """Everything one forward pass revealed (mutable while tracing; read-only afterwards)."""

    convs: list[ConvUse] = field(default_factory=list)
    norms: list[NormUse] = field(default_factory=list)
    linears: list[LinearUse] = field(default_factory=list)
    layer_norms: list[LayerNormUse] = field(default_factory=list)
    scales: list[ScaleUse] = field(default_factory=list)
    outputs: list[tuple[int, ...]] = field(default_factory=list)
    readers: dict[str, int] = field(default_factory=dict)  # conv name -> ops reading its output
    chunks: list[tuple[str, tuple[Layout, ...]]] = field(default_factory=list)  # (where, parts): must stay equal
    shuffles: list[tuple[Hashable, Layout, int, str]] = field(default_factory=list)  # (output key, input, groups, where)
