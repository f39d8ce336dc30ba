"""A detector's head in small: box distributions reshaped and transposed, a DFL-style 1×1 conv on the reshaped
tensor, a second output — analysed, planned and compacted, both outputs' shapes kept."""
from __future__ import annotations

import numpy as np
from graphs import GraphBuilder

from onnxmbs.compact.writer import compact_model
from onnxmbs.graph.analysis import analyze
from onnxmbs.runtime.session import open_session
from onnxmbs.workflow.plan import plan_model


def head_graph():
    g = GraphBuilder((1, 3, 32, 32), seed=6)
    x = g.relu(g.conv("input", 3, 16, stride=2, name="stem"))
    x = g.relu(g.conv(x, 16, 32, stride=2, name="body"))  # 8x8
    box = g.conv(x, 32, 4 * 8, 1, name="box")  # 4 sides x 8 bins
    cls = g.conv(x, 32, 5, 1, name="cls")
    dist = g.op("Reshape", [box, g.const(np.array([1, 4, 8, 64], np.int64))])
    dist = g.op("Softmax", [g.op("Transpose", [dist], perm=[0, 2, 1, 3])], axis=1)  # (1, 8, 4, 64)
    dfl = g.conv(dist, 8, 1, 1, bias=False, name="dfl")  # the DFL conv: bins -> expectation
    boxes = g.op("Reshape", [dfl, g.const(np.array([1, 4, 64], np.int64))])
    return g.build([boxes, g.op("Sigmoid", [cls])])


def test_a_conv_on_a_reshaped_head_tensor_is_its_own_macroblock_and_the_body_still_cuts():
    model = head_graph()
    analysis = analyze(model)
    layers = {c.name: c for c in analysis.layers}
    assert layers["dfl"].out_hw == (4, 64)  # its "resolution" is the reshaped tensor's
    where = analysis.macroblock_of()
    assert where["dfl"] not in {where["stem"], where["body"], where["box"]}
    groups = {g.id: g for g in analysis.channels.groups}
    assert "Reshape" in groups[analysis.channels.conv_group["box"]].frozen  # bins reshaped with the sides
    assert groups[analysis.channels.conv_group["body"]].frozen is None
    plan = plan_model(model, synthetic=4, preprocess="raw", z=2).document.to_json()
    result = compact_model(model, plan)
    assert result.params_compact == plan["summary"]["params_compact"] < plan["summary"]["params"]
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    original = open_session(model.SerializeToString()).run(None, {"input": x})
    compact = open_session(result.model.SerializeToString()).run(None, {"input": x})
    assert [o.shape for o in compact] == [o.shape for o in original] == [(1, 4, 64), (1, 5, 8, 8)]
