"""Reconstruction-aware channel selection (``select="greedy"``), after He et al. 2017 and ThiNet.

For every channel group that the plan cuts, each layer that sums over the group's channels
(Conv, Gemm, MatMul; not depthwise convs, whose outputs are the group itself) is written as
a sum of per-channel contributions: at a sampled output position and a randomly drawn output
channel ``o``, ``z_c = Σ_k W[o, c, k] · x[c, k]`` and the layer's output is ``Σ_c z_c`` (plus
the bias). Over the calibration data onnxmbs accumulates ``G = Σ z zᵀ`` per group — summed
over the group's consumers, each scaled to unit output energy — on the *original* model.

Keeping the channels ``T`` and re-scaling them by ``β`` leaves the error
``‖Z·1 − Z_T·β‖²``, minimised by least squares. Greedy backward elimination removes, one at
a time, the channel whose removal increases that minimum least: ``β_j² / (G_TT⁻¹)_jj``
(the removed channel's share after re-fitting, as in Optimal Brain Surgeon), updating the
inverse in ``O(C²)``. The order of removal is the channel's score (removed last = best); the
selection then keeps the best ``compact_channels`` under the same structure rules as the
other selections (:func:`onnxmbs.compact.select.pick`). Memory: one ``C×C`` matrix per group
and one batch of the consumers' inputs.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxmbs.compact.activations import Probe, open_batches
from onnxmbs.compact.index import group_offsets, identity_layouts
from onnxmbs.compact.sampling import conv_geometry, conv_rows, matmul_rows, sample_flat, sample_positions
from onnxmbs.graph.analysis import Analysis
from onnxmbs.graph.proto import attr, node_names
from onnxmbs.progress import progress_bar
from onnxmbs.stats.measure import CalibrationOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Consumer:
    name: str
    x: str
    weight: np.ndarray = field(repr=False)  # conv: dense (Cout, Cin, kh, kw); matmul: (K, N)
    node: object = field(repr=False)
    members: tuple[tuple[int, np.ndarray, np.ndarray], ...] = field(repr=False)  # (group, input positions, local ids)


def _dense(node, w: np.ndarray) -> np.ndarray:
    """A grouped conv weight as the equivalent dense weight (zeros across groups)."""
    g = int(attr(node, "group", 1))
    if g == 1:
        return w
    co, ci_g = w.shape[:2]
    dense = np.zeros((co, ci_g * g, *w.shape[2:]), w.dtype)
    for j in range(g):
        rows = slice(j * co // g, (j + 1) * co // g)
        dense[rows, j * ci_g:(j + 1) * ci_g] = w[rows]
    return dense


def _weight(node, consts) -> np.ndarray | None:
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or node.input[0] in consts:
        return None
    if node.op_type == "Conv":
        g = int(attr(node, "group", 1))
        depthwise = g > 1 and w.shape[1] == 1 and w.shape[0] == g
        return None if depthwise or w.ndim != 4 else _dense(node, np.asarray(w, np.float32))
    if w.ndim != 2 or (node.op_type == "Gemm" and attr(node, "transA", 0)):
        return None
    return np.asarray(w.T if node.op_type == "Gemm" and attr(node, "transB", 0) else w, np.float32)


def _consumers(analysis: Analysis, cut: set[int]) -> list[_Consumer]:
    ids = identity_layouts(analysis)
    offsets = group_offsets(analysis)
    where = {g.id: (offsets[g.id], g.channels) for g in analysis.channels.groups}
    graph, consts = analysis.loaded.graph, analysis.loaded.constants
    found = []
    for node, name in zip(graph.node, node_names(graph)):
        lay = ids.get(node.input[0]) if node.op_type in ("Conv", "Gemm", "MatMul") and node.input else None
        w = _weight(node, consts) if lay is not None and lay.dims is None else None
        if w is None:
            continue
        members = []
        for g in cut:
            start, size = where[g]
            positions = np.flatnonzero((lay.ids >= start) & (lay.ids < start + size))
            if len(positions):
                members.append((g, positions, lay.ids[positions] - start))
        if members:
            found.append(_Consumer(name, node.input[0], w, node, tuple(members)))
    return found


def _contributions(c: _Consumer, x: np.ndarray, shapes, rng: np.random.Generator, positions: int) -> np.ndarray:
    """(rows, Cin): per-input-channel contributions to one random output channel per sampled position."""
    n = x.shape[0]
    if c.node.op_type == "Conv":
        out = shapes[c.node.output[0]]
        geom = conv_geometry(c.node, x.shape[2:], out[2:], c.weight.shape[2:])
        spots = sample_positions(rng, n, out[2], out[3], positions)
        patches = conv_rows(x, geom, spots)  # (rows, Cin, kh, kw)
        o = rng.integers(0, c.weight.shape[0], len(spots))
        return np.einsum("rckl,rckl->rc", patches, c.weight[o])
    rows = int(np.prod(x.shape[1:-1])) if x.ndim > 2 else 1
    spots = sample_flat(rng, n, rows, positions)
    feats = matmul_rows(x, spots)  # (rows, K)
    o = rng.integers(0, c.weight.shape[1], len(spots))
    return feats * c.weight[:, o].T


def eliminate(gram: np.ndarray) -> np.ndarray:
    """Scores from greedy backward elimination on ``gram`` (higher = removed later = more important)."""
    size = gram.shape[0]
    g = gram.astype(np.float64)
    g = g + np.eye(size) * max(1e-9 * float(np.trace(g)) / max(size, 1), 1e-30)
    b = g.sum(axis=1)  # Zᵀ(Z·1)
    h = np.linalg.inv(g)
    alive = list(range(size))
    score = np.zeros(size)
    for step in range(size - 1):
        beta = h @ b[alive]
        cost = beta ** 2 / np.diag(h)
        j = int(np.argmin(cost))
        score[alive[j]] = step
        col = h[:, j].copy()
        h = h - np.outer(col, col) / col[j]
        h = np.delete(np.delete(h, j, axis=0), j, axis=1)
        del alive[j]
    score[alive[0]] = size - 1
    return score


def greedy_scores(analysis: Analysis, model: onnx.ModelProto, widths: Mapping[int, int], data: CalibrationOptions,
                  *, positions: int = 32, seed: int = 0) -> dict[int, np.ndarray]:
    """Score per channel of every cut group (see the module doc); groups nobody reads are left out.

    ``model`` is the model as the user gave it (its batch size as in the file), ``analysis`` its analysis.
    """
    cut = {g.id for g in analysis.channels.groups if widths[g.id] < g.channels}
    consumers = _consumers(analysis, cut)
    if not consumers:
        return {}
    sizes = {g.id: g.channels for g in analysis.channels.groups}
    grams = {g: np.zeros((sizes[g], sizes[g])) for g in {m[0] for c in consumers for m in c.members}}
    loaded = analysis.loaded
    probe = Probe(model, [c.x for c in consumers], input_name=loaded.input.name, provider=data.provider)
    scales: dict[str, float] = {}
    bar = progress_bar(data.progress, total=None, unit="img", desc="channel ranking")
    for b, batch in enumerate(open_batches(loaded, data)()):
        values = probe.run(batch)
        for k, c in enumerate(consumers):
            z = _contributions(c, values[c.x], loaded.shapes, np.random.default_rng([seed, k, b]), positions)
            z = z.astype(np.float64)
            scale = scales.setdefault(c.name, 1.0 / max(float(np.mean(z.sum(axis=1) ** 2)), 1e-30))
            for g, pos, local in c.members:
                zg = z[:, pos]
                grams[g][np.ix_(local, local)] += scale * (zg.T @ zg)
        if bar is not None:
            bar.update(batch.shape[0])
    if bar is not None:
        bar.close()
    return {g: eliminate(gram) for g, gram in grams.items()}
