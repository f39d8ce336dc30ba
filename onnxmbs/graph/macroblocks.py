"""Macroblocks: convs grouped by output resolution (docs/algorithm.md §4).

Level ``i = round(log2(L / min(H_out, W_out)))`` for every conv with a finite receptive
field; the macroblocks are the non-empty levels, ``m_0`` the highest resolution. Convs
whose input has passed a global pooling (RF = inf) belong to none.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from onnxmbs.errors import MBSError
from onnxmbs.graph.shapes import ConvLayer


@dataclass(frozen=True)
class Macroblock:
    index: int
    level: int
    out_hw: tuple[int, int]  # the largest member's output size
    layers: tuple[str, ...]


def level_of(conv: ConvLayer, L: int) -> int | None:  # noqa: N803 - the paper's name
    if conv.rf is None:
        return None
    return int(round(math.log2(L / min(conv.out_hw))))


def build_macroblocks(convs: Sequence[ConvLayer], L: int, *,  # noqa: N803
                      override: Mapping[str, int] | None = None) -> tuple[Macroblock, ...]:
    """Group convs by level; ``override`` maps conv name -> level to regroup by hand."""
    override = dict(override or {})
    unknown = set(override) - {c.name for c in convs}
    if unknown:
        raise MBSError(f"macroblock override names unknown conv layers: {sorted(unknown)[:3]} — "
                       "use the layer names printed by `onnxmbs analyze`")
    levels: dict[int, list[ConvLayer]] = {}
    for conv in convs:
        level = override.get(conv.name, level_of(conv, L))
        if level is not None:
            levels.setdefault(level, []).append(conv)
    blocks = []
    for index, level in enumerate(sorted(levels)):
        members = levels[level]
        largest = max(members, key=lambda c: c.out_hw[0] * c.out_hw[1])
        blocks.append(Macroblock(index=index, level=level, out_hw=largest.out_hw,
                                 layers=tuple(c.name for c in members)))
    return tuple(blocks)
