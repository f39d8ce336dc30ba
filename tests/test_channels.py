"""Channel groups and activation taps on tiny graphs (docs/algorithm.md §5, §8)."""
from __future__ import annotations

import numpy as np
import pytest

from graphs import GraphBuilder, classifier
from onnxmbs import analyze


def group_of(a, conv):
    return a.channels.conv_group[conv]


def groups(a):
    return {g.id: g for g in a.channels.groups}


def test_residual_add_ties_stem_and_block_and_projection_starts_new_group():
    g = GraphBuilder((1, 3, 16, 16))
    stem = g.relu(g.conv(g.input.name, 3, 8, name="stem"))
    y = g.conv(g.relu(g.conv(stem, 8, 8, name="b1")), 8, 8, name="b2")
    x = g.relu(g.op("Add", [y, stem], name="add1"), name="relu_add1")
    proj = g.conv(x, 8, 16, 1, stride=2, name="proj")
    z = g.conv(g.relu(g.conv(x, 8, 16, stride=2, name="c1")), 16, 16, name="c2")
    out = g.relu(g.op("Add", [z, proj]), name="relu_add2")
    a = analyze(g.build([classifier(g, out, 16)]))
    assert group_of(a, "stem") == group_of(a, "b2")
    assert group_of(a, "proj") == group_of(a, "c2") != group_of(a, "stem")
    assert group_of(a, "b1") not in (group_of(a, "stem"), group_of(a, "c1"))
    assert set(groups(a)[group_of(a, "stem")].producers) == {"stem", "b2"}
    # the shortcut projection and the block's last conv share one activation tap
    assert a.taps["proj"].node == a.taps["c2"].node == "relu_add2"
    assert a.taps["b2"].node == "relu_add1"
    assert all(not groups(a)[group_of(a, c)].frozen for c in ("stem", "b1", "proj"))


def test_depthwise_follows_input_and_concat_keeps_slices():
    g = GraphBuilder((1, 3, 16, 16))
    a1 = g.relu(g.conv(g.input.name, 3, 8, 1, name="pw1"))
    dw = g.relu(g.conv(a1, 8, 8, 3, group=8, name="dw"))
    b1 = g.relu(g.conv(a1, 8, 4, 1, name="pw2"))
    cat = g.op("Concat", [dw, b1], axis=1, name="cat")
    last = g.relu(g.conv(cat, 12, 6, 1, name="mix"))
    a = analyze(g.build([classifier(g, last, 6)]))
    assert group_of(a, "dw") == group_of(a, "pw1")
    assert groups(a)[group_of(a, "pw1")].followers == ("dw",)
    assert a.channels.conv_input_groups["mix"] == (group_of(a, "pw1"), group_of(a, "pw2"))


def test_classifier_conv_reaching_output_is_frozen_and_input_is_frozen():
    g = GraphBuilder((1, 3, 8, 8))
    x = g.relu(g.conv(g.input.name, 3, 8, name="body"))
    pooled = g.op("GlobalAveragePool", [x])
    logits = g.conv(pooled, 8, 10, 1, name="cls")
    out = g.op("Flatten", [logits])
    a = analyze(g.build([out]))
    assert "graph output" in groups(a)[group_of(a, "cls")].frozen
    assert a.layers[-1].rf is None
    assert groups(a)[a.channels.conv_input_groups["body"][0]].frozen == "model input channels"
    assert not groups(a)[group_of(a, "body")].frozen


def test_channel_shuffle_keeps_the_group_with_multiple_of():
    g = GraphBuilder((1, 6, 8, 8))
    x = g.relu(g.conv(g.input.name, 6, 12, 1, group=3, name="gconv"))
    r1 = g.op("Reshape", [x, g.const(np.array([1, 3, 4, 8, 8], np.int64))])
    t = g.op("Transpose", [r1], perm=[0, 2, 1, 3, 4])
    r2 = g.op("Reshape", [t, g.const(np.array([1, 12, 8, 8], np.int64))])
    y = g.relu(g.conv(r2, 12, 12, 3, group=12, name="dw"))
    a = analyze(g.build([classifier(g, y, 12)]))
    grp = groups(a)[group_of(a, "gconv")]
    assert group_of(a, "dw") == grp.id and not grp.frozen
    assert grp.multiple_of == 3


def test_taps_follow_bn_affine_transpose_and_skip_linear():
    g = GraphBuilder((1, 3, 8, 8))
    c1 = g.conv(g.input.name, 3, 4, name="c1")
    bn = g.op("BatchNormalization", [c1] + [g.const(np.ones(4, np.float32)) for _ in range(2)]
              + [g.const(np.zeros(4, np.float32)), g.const(np.ones(4, np.float32))])
    scaled = g.op("Mul", [bn, g.const(np.full((4, 1, 1), 2.0, np.float32))])
    t = g.op("Transpose", [scaled], perm=[0, 2, 3, 1])
    six = g.op("Clip", [t, g.const(np.array(0.0, np.float32)), g.const(np.array(6.0, np.float32))], name="relu6")
    back = g.op("Transpose", [six], perm=[0, 3, 1, 2])
    linear = g.conv(back, 4, 4, 1, name="linear_bottleneck")
    leaky = g.op("Clip", [linear, g.const(np.array(-1.0, np.float32)), g.const(np.array(1.0, np.float32))])
    c3 = g.conv(leaky, 4, 4, 1, name="c3")
    m = g.op("Max", [c3, g.const(np.array(0.0, np.float32))], name="max0")
    a = analyze(g.build([m]))
    assert a.taps["c1"].node == "relu6" and a.taps["c1"].channel_axis == 3
    assert a.taps["linear_bottleneck"] is None  # Clip(-1, 1) is not ReLU-family
    assert a.taps["c3"].node == "max0"


def test_tap_passes_concat_with_the_convs_own_slice():
    """DenseNet: conv -> Concat -> BN -> ReLU; the conv's activation is its slice of that ReLU."""
    import onnx
    from onnxmbs.planning.pipeline import plan_from_statistics
    from onnxmbs.stats.counting import collect_statistics
    g = GraphBuilder(("N", 3, 8, 8))
    stem = g.relu(g.conv(g.input.name, 3, 4, name="stem"), name="r0")
    new = g.conv(stem, 4, 2, name="dense1")
    cat = g.op("Concat", [stem, new], axis=1)
    bn = g.op("BatchNormalization", [cat] + [g.const(np.full(6, v, np.float32)) for v in (1.0, 0.0, 0.0, 1.0)])
    act = g.relu(bn, name="r1")
    model = g.build([g.relu(g.conv(act, 6, 4, name="next"), name="r2")])
    a = analyze(model)
    tap = a.taps["dense1"]
    assert (tap.node, tap.start, tap.stop) == ("r1", 4, 6)
    assert a.taps["stem"].node == "r0" and a.taps["stem"].stop is None
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    stats = collect_statistics(a, [x], provider="cpu", progress=False)
    probe = onnx.load_from_string(model.SerializeToString())
    probe.graph.output.append(onnx.ValueInfoProto(name="r1_out"))
    import onnxruntime as ort
    full = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["r1_out"], {"input": x})[0]
    expected = (full[:, 4:6] != 0).mean()
    facts = {l["name"]: l for l in plan_from_statistics(a, stats).document.to_json()["layers"]}
    assert facts["dense1"]["p_nonzero"] == pytest.approx(expected)
    assert len(facts["dense1"]["channel_p_nonzero"]) == 2


def test_add_of_conv_to_concat_splits_the_conv_group():
    """ShuffleNet: a stride-1 unit adds a conv output (480) to a concat of two groups (240 + 240)."""
    g = GraphBuilder((1, 4, 8, 8))
    a1 = g.relu(g.conv(g.input.name, 4, 6, 1, name="a"))
    b1 = g.relu(g.conv(g.input.name, 4, 6, 1, name="b"))
    cat = g.op("Concat", [a1, b1], axis=1)
    branch = g.conv(g.relu(g.conv(cat, 12, 3, 1, name="squeeze")), 3, 12, 1, name="expand")
    out = g.relu(g.op("Add", [cat, branch]))
    last = g.relu(g.conv(out, 12, 5, 1, name="mix"))
    a = analyze(g.build([classifier(g, last, 5)]))
    parts = a.channels.conv_output_groups["expand"]
    assert parts == (group_of(a, "a"), group_of(a, "b"))
    assert {"a", "expand"} <= set(groups(a)[parts[0]].producers)
    assert all(not groups(a)[p].frozen for p in parts)
    assert a.channels.conv_input_groups["mix"] == parts
    from onnxmbs.planning.pipeline import plan_from_statistics
    layers = {l["name"]: l for l in plan_from_statistics(a, None).document.to_json()["layers"]}
    assert layers["expand"]["output_groups"] == list(parts) and layers["expand"]["compact_out_channels"] == 12
    from onnxmbs.planning.scaling import param_specs
    spec = {s.name: s for s in param_specs(a)}
    expand_w = next(l for l in a.layers if l.name == "expand").weight
    assert spec[expand_w].dims[0].groups == parts
