"""Compact surgery, part 2 — which channels of each group survive.

``select="nonzero"`` (default) ranks a group's channels by the measured non-zero rate of
their activation: the ``channel_p_nonzero`` of every plan layer in that group, averaged
(channels that are never active go first), ties broken by the L1 norm. A group without a
measured layer falls back to L1. ``select="l1"`` ranks by the L1 norm of the producing
filters only (each producer's norms divided by their mean, then summed over producers).
``select="greedy"`` ranks by the reconstruction-aware scores of
:mod:`onnxmbs.compact.ranking` (passed in as ``scores``; groups without a score fall back to L1).

Structure is kept so that inherited weights stay exact:

* a group read or written by grouped convs (``multiple_of`` m) keeps the same number of
  channels in each of its m contiguous blocks;
* a group that passes a channel shuffle with s groups keeps the *same* offsets in each of
  its s blocks (so the compact shuffle is the original shuffle restricted to the kept
  channels) and, when the sizes allow, balances those offsets over s sub-blocks, so the
  grouped conv after the shuffle stays exact too. When the widths do not allow it (e.g.
  ShuffleNet's 111 = 3·37 bottleneck) the compact graph is still valid and exact for all
  1×1 and depthwise convs; the grouped conv's weights are taken at the same offset inside
  the group and the node is reported as *inexact* (retrain).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxmbs.graph.analysis import Analysis
from onnxmbs.planning.document import LayerRecord, PlanDocument
from onnxmbs.compact.index import Layout, group_offsets
from onnxmbs.graph.proto import attr, node_names

SELECT = ("nonzero", "l1", "greedy")


@dataclass(frozen=True)
class Selection:
    keep: Mapping[int, np.ndarray]  # group id -> kept channel indices inside the group, ascending
    source: Mapping[int, str]  # group id -> "all" | "nonzero" | "l1"


def _global(analysis: Analysis) -> tuple[int, dict[int, slice]]:
    offsets = group_offsets(analysis)
    total = sum(g.channels for g in analysis.channels.groups)
    return total, {g.id: slice(offsets[g.id], offsets[g.id] + g.channels) for g in analysis.channels.groups}


def _rates(analysis: Analysis, layers: Sequence[LayerRecord], ids: Mapping[str, Layout]) -> dict[int, np.ndarray]:
    """Mean measured non-zero rate per channel of each group (groups without measurements absent)."""
    total, where = _global(analysis)
    outputs = {c.name: c.output for c in analysis.layers}
    sums, counts = np.zeros(total), np.zeros(total)
    for layer in layers:
        rates = layer.channel_p_nonzero
        lay = ids.get(outputs.get(layer.name, ""))
        if rates is not None and lay is not None and len(rates) == len(lay.ids):
            np.add.at(sums, lay.ids, np.asarray(rates, dtype=np.float64))
            np.add.at(counts, lay.ids, 1)
    return {g: sums[sl] / np.maximum(counts[sl], 1) for g, sl in where.items() if counts[sl].all()}


def _producer_l1(node, consts: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Per-output-channel L1 norm of a Conv/Gemm/MatMul weight, divided by its mean."""
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim < 2:
        return None
    w = np.abs(np.asarray(w, dtype=np.float64))
    if node.op_type == "Conv":
        norms = w.reshape(w.shape[0], -1).sum(1)
    elif node.op_type == "Gemm" and attr(node, "transB", 0):
        norms = w.sum(1)
    else:
        norms = np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1).sum(1)
    mean = norms.mean()
    return norms / mean if mean > 0 else norms


def _l1(analysis: Analysis, ids: Mapping[str, Layout]) -> dict[int, np.ndarray]:
    """Per group: the normalised L1 norms of its producers' filters, summed over producers."""
    graph, consts = analysis.loaded.graph, analysis.loaded.constants
    producers = {p for g in analysis.channels.groups for p in g.producers}
    total, where = _global(analysis)
    score = np.zeros(total)
    for node, name in zip(graph.node, node_names(graph)):
        lay = ids.get(node.output[0]) if name in producers else None
        norms = _producer_l1(node, consts) if lay is not None else None
        if norms is not None and len(norms) == len(lay.ids):
            np.add.at(score, lay.ids, norms)
    return {g: score[sl] for g, sl in where.items()}


def _ranked(primary: np.ndarray, secondary: np.ndarray, k: int, blocks: int) -> np.ndarray:
    """The k best indices (primary desc, then secondary desc, then index asc), k/blocks per block."""
    size = len(primary) // blocks
    picked = []
    for b in range(blocks):
        sl = slice(b * size, (b + 1) * size)
        order = np.lexsort((np.arange(size), -secondary[sl], -primary[sl]))
        picked.append(b * size + order[: k // blocks])
    return np.sort(np.concatenate(picked))


def _blocks(size: int, k: int, *candidates: int) -> int:
    for b in candidates:
        if b >= 1 and size % b == 0 and k % b == 0:
            return b
    return 1


def pick(primary: np.ndarray, secondary: np.ndarray, width: int, *, multiple_of: int = 1, shuffle: int = 0) -> np.ndarray:
    """Kept indices of one group: the best ``width`` channels under the structure rules above."""
    channels = len(primary)
    if width >= channels:
        return np.arange(channels)
    if shuffle > 1 and channels % shuffle == 0 and width % shuffle == 0:
        m, k = channels // shuffle, width // shuffle
        inner = multiple_of // shuffle if multiple_of % shuffle == 0 else 1
        b = _blocks(m, k, math.lcm(inner, shuffle), shuffle, inner)
        offsets = _ranked(primary.reshape(shuffle, m).sum(0), secondary.reshape(shuffle, m).sum(0), k, b)
        return np.sort((np.arange(shuffle)[:, None] * m + offsets[None, :]).reshape(-1))
    return _ranked(primary, secondary, width, _blocks(channels, width, multiple_of))


def _shuffles(analysis: Analysis) -> dict[int, int]:
    return {c.segs[0]: c.split for c in analysis.channels.tensor_chan.values() if c.split and len(c.segs) == 1}


def select_channels(analysis: Analysis, plan: PlanDocument, widths: Mapping[int, int],
                    ids: Mapping[str, Layout], *, select: str = "nonzero",
                    scores: Mapping[int, np.ndarray] | None = None) -> Selection:
    """Kept channels of every group for the compact widths ``widths``."""
    rates = _rates(analysis, plan.layers, ids) if select == "nonzero" else {}
    l1 = _l1(analysis, ids)
    shuffles = _shuffles(analysis)
    keep, source = {}, {}
    for g in analysis.channels.groups:
        width = widths[g.id]
        if width >= g.channels:
            keep[g.id], source[g.id] = np.arange(g.channels), "all"
            continue
        ranked = rates if select == "nonzero" else (scores or {}) if select == "greedy" else {}
        primary = ranked.get(g.id, l1[g.id])
        source[g.id] = select if g.id in ranked else "l1"
        keep[g.id] = pick(primary, l1[g.id], width, multiple_of=g.multiple_of, shuffle=shuffles.get(g.id, 0))
    return Selection(keep=keep, source=source)
