"""Counts mean learnable weights: initializers count, values of Constant nodes (a head's anchors,
strides, grids) do not."""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from graphs import GraphBuilder
from onnxmbs.graph.analysis import analyze


def head(*, as_constant_node: bool):
    """conv (8 -> 8 channels) then y * s + a, with s and a 8-vectors: initializers, or Constant nodes."""
    g = GraphBuilder((1, 3, 8, 8))
    y = g.conv(g.input.name, 3, 8, name="c1")
    values = [np.linspace(1, 2, 8, dtype=np.float32).reshape(1, 8, 1, 1),
              np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1)]
    if as_constant_node:
        names = []
        for i, v in enumerate(values):
            names.append(f"k{i}")
            g.nodes.append(helper.make_node("Constant", [], [f"k{i}"], value=numpy_helper.from_array(v, f"k{i}v")))
    else:
        names = [g.const(v) for v in values]
    return g.build([g.op("Add", [g.op("Mul", [y, names[0]]), names[1]])])


def test_constant_node_values_are_not_parameters():
    conv = 8 * 3 * 3 * 3 + 8
    assert analyze(head(as_constant_node=False)).shapes.params == conv + 8 + 8  # scale and shift are weights
    assert analyze(head(as_constant_node=True)).shapes.params == conv  # anchors/strides are not
