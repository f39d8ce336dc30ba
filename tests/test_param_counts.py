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


def test_initializers_a_head_computes_with_are_not_parameters():
    """The dynamo exporter stores a detector's anchors and strides as initializers: applied to a reshaped tensor
    (not a layer's channels) or to the model input (normalisation) they are not weights; a per-channel scale
    after a conv, through an activation and a Neg (tf2onnx's PReLU), is."""
    g = GraphBuilder((1, 3, 8, 8))
    x = g.op("Sub", ["input", g.const(np.full((1, 3, 1, 1), 0.5, np.float32))])  # input normalisation
    y = g.conv(x, 3, 8, 1, name="c1")
    scaled = g.op("Mul", [g.relu(g.op("Neg", [y])), g.const(np.linspace(1, 2, 8, dtype=np.float32).reshape(1, 8, 1, 1))])
    boxes = g.op("Reshape", [scaled, g.const(np.array([1, 2, 256], np.int64))])
    anchors = g.const(np.random.default_rng(0).random((2, 256), dtype=np.float32))
    strides = g.const(np.full((1, 256), 8.0, np.float32))
    out = g.op("Mul", [g.op("Add", [boxes, anchors]), strides])
    assert analyze(g.build([out])).shapes.params == (8 * 3 + 8) + 8  # the conv and the scale only
