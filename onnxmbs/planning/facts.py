"""The pure-data contract between the analysis (graph/, stats/) and the planner.

Plain frozen records with no onnx or onnxruntime in sight: the planner can be run, tested
and reasoned about from these alone.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerFacts:
    name: str
    macroblock: int | None  # None: RF infinite (after global pooling) -> in no macroblock
    rf: int | None
    flops: int
    p_nonzero: float
    group: int  # channel group of the output (the first, when several)
    output_groups: tuple[int, ...] = ()  # all groups along the output channels


@dataclass(frozen=True)
class GroupFacts:
    id: int
    channels: int
    producers: tuple[str, ...]  # conv layers whose macroblock beta decides the width
    frozen: str | None
    multiple_of: int = 1


@dataclass(frozen=True)
class DimSpec:
    """One axis of a parameter tensor: fixed, or the (compact) width of channel groups / divisor."""

    size: int
    groups: tuple[int, ...] = ()
    divisor: int = 1

    def compact(self, widths: Mapping[int, int]) -> int:
        if not self.groups:
            return self.size
        return sum(widths[g] for g in self.groups) // self.divisor


@dataclass(frozen=True)
class ParamSpec:
    """A parameter tensor (or a MAC term) and how its axes scale with channel groups."""

    name: str
    dims: tuple[DimSpec, ...]
    macs_per_element: int = 0  # MACs per image per weight element (H_out*W_out for Conv, 1 for Gemm)
    is_param: bool = True  # False for BatchNorm running statistics (resized but not counted)
    copy: bool = False  # another use of a shared tensor that follows other groups: a copy when the cuts differ
    uniform: bool = False  # its values do not change along the cut axes: equal-shaped cuts are equal values

    @property
    def size(self) -> int:
        return math.prod(d.size for d in self.dims)

    def compact_size(self, widths: Mapping[int, int]) -> int:
        return math.prod(d.compact(widths) for d in self.dims)

    def cut_key(self, widths: Mapping[int, int]) -> tuple | None:
        """Equal keys, equal values: None when no axis is cut (the original value), else the compact shape
        (a uniform tensor) or which groups cut it."""
        if all(d.compact(widths) == d.size for d in self.dims):
            return None
        if self.uniform:
            return tuple(d.compact(widths) for d in self.dims)
        return tuple(d.groups for d in self.dims)
