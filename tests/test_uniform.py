"""Uniform α-scaling at an MBS plan's parameter budget (the paper's Figure 5 baseline)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

import onnxmbs
from onnxmbs.errors import MBSError
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.planning.sweep import make_sweeper
from onnxmbs.planning.uniform import match_alpha, uniform_at, uniform_document

MODEL = Path(__file__).resolve().parents[1] / "models" / "resnet20_digits.onnx"


@pytest.fixture(scope="module")
def sweeper():
    return make_sweeper(onnxmbs.analyze(MODEL), None)


def _params(sweeper, alpha: float) -> int:
    return uniform_at(sweeper.groups, sweeper.layers, sweeper.specs, alpha).summary.params_compact


@pytest.mark.parametrize("target", [60_000, 134_480, 174_192, 210_068])
def test_match_alpha_is_the_closest_step(sweeper, target):
    got = match_alpha(sweeper.groups, sweeper.layers, sweeper.specs, target)
    channels = {g.channels for g in sweeper.groups if not g.frozen}
    every = sorted({j / c for c in channels for j in range(1, c + 1)})
    best = min(abs(_params(sweeper, a) - target) for a in every)  # brute force over every step
    assert abs(got.summary.params_compact - target) == best
    assert 0 < abs(got.summary.params_compact - target) <= got.step  # within one channel step


def test_uniform_widths_are_ceil_alpha_c_for_scalable_groups(sweeper):
    point = uniform_at(sweeper.groups, sweeper.layers, sweeper.specs, 0.5)
    producers = {l.name for l in sweeper.layers if l.macroblock is not None}
    for g in sweeper.groups:
        scalable = not g.frozen and any(p in producers for p in g.producers)
        assert point.widths[g.id] == (math.ceil(0.5 * g.channels) if scalable else g.channels)
    with pytest.raises(MBSError, match="α"):
        uniform_at(sweeper.groups, sweeper.layers, sweeper.specs, 1.5)


def test_uniform_document_carries_the_widths(sweeper):
    plan = plan_from_statistics(sweeper.analysis, None, k=1.0).document
    point = match_alpha(sweeper.groups, sweeper.layers, sweeper.specs, 150_000)
    doc = uniform_document(plan, point)
    assert doc.group_widths() == point.widths
    assert doc.summary.params_compact == point.summary.params_compact
    assert all(l.compact_out_channels == sum(point.widths[g] for g in l.output_groups or (l.group,))
               for l in doc.layers)
    assert {m.beta for m in doc.macroblocks} == {point.alpha}
