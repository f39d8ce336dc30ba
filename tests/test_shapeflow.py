"""A Reshape whose target shape reads, at run time, the width of channels its data does not carry freezes them
(YOLO11's attention: ``B, C, H, W = x.shape`` then ``y.view(B, C, H, W)`` of a frozen product)."""
from __future__ import annotations

import numpy as np
import pytest
from graphs import GraphBuilder

from onnxmbs.graph.analysis import analyze


def graph(*, data_is_x: bool, entry: int = 1):
    g = GraphBuilder(("N", 3, 8, 8), seed=2)
    x = g.relu(g.conv("input", 3, 8, name="x"))
    other = g.relu(g.conv(x, 8, 8, 1, name="other"))
    dims = g.op("Shape", [x])
    pick = lambda i: g.op("Gather", [dims, g.const(np.array([i], np.int64))], axis=0)  # noqa: E731
    shape = g.op("Concat", [pick(0), pick(entry), g.const(np.array([-1], np.int64))], axis=0)
    flat = g.op("Reshape", [x if data_is_x else other, shape])
    return g.build([g.op("ReduceMean", [flat], axes=[2], keepdims=0)], opset=17)


def frozen(analysis, conv: str) -> str:
    return {g.id: g.frozen or "" for g in analysis.channels.groups}[analysis.channels.conv_group[conv]]


def test_reshape_of_other_data_to_a_cut_width_freezes_the_width_it_reads():
    reason = frozen(analyze(graph(data_is_x=False)), "x")
    assert "reads these channels' count at run time for data that does not carry them" in reason


@pytest.mark.parametrize("data_is_x, entry", [(True, 1), (False, 0)])
def test_reshape_of_its_own_channels_or_of_the_batch_alone_does_not(data_is_x, entry):
    assert "count at run time" not in frozen(analyze(graph(data_is_x=data_is_x, entry=entry)), "x")
