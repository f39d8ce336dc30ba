"""Shape computations folded before run time (onnxmbs/graph/folding.py)."""
from __future__ import annotations

import numpy as np
from graphs import GraphBuilder

from onnxmbs.graph.load import load_model


def shape_graph(shape):
    g = GraphBuilder(shape)
    x = g.conv("input", 3, 10, 1, name="c")
    dims = g.op("Shape", [x])
    width = g.op("Gather", [dims, g.const(np.array([1], np.int64))], axis=0)
    batch = g.op("Gather", [dims, g.const(np.array([0], np.int64))], axis=0)
    third = g.op("Div", [g.op("Sub", [width, g.const(np.array([-2], np.int64))]), g.const(np.array([3], np.int64))])
    flat = g.op("Concat", [g.op("Mul", [batch, g.const(np.array([1], np.int64))]), third], axis=0)
    return g.build([g.op("Relu", [x])]), third, flat


def test_channel_counts_fold_and_the_batch_does_not_when_dynamic():
    model, third, flat = shape_graph((1, 3, 8, 8))
    values = load_model(model).static_values
    assert values[third].tolist() == [(10 + 2) // 3]  # integer Div truncates, as ONNX does
    assert values[flat].tolist() == [1, 4]  # a fixed batch folds too
    dynamic, third, flat = shape_graph(("N", 3, 8, 8))
    values = load_model(dynamic).static_values
    assert values[third].tolist() == [4]
    assert values.get(flat) is None and flat not in values  # depends on the batch size
