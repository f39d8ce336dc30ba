"""Receptive fields, output sizes, MACs and params of tiny graphs, expected values computed here."""
from __future__ import annotations

import math

import numpy as np
import pytest

from graphs import GraphBuilder, classifier
from onnxmbs import MBSError, analyze


def by_name(analysis):
    return {c.name: c for c in analysis.layers}


def test_plain_chain_rf_stride_dilation():
    g = GraphBuilder((1, 3, 32, 32))
    x = g.relu(g.conv(g.input.name, 3, 8, 3, name="c1"))
    x = g.relu(g.conv(x, 8, 8, 3, stride=2, name="c2"))
    x = g.relu(g.conv(x, 8, 16, 3, dilation=2, name="c3"))
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.relu(g.conv(x, 16, 16, 5, kw=3, name="c4"))  # non-square: larger axis counts
    out = classifier(g, x, 16)
    a = analyze(g.build([out]))
    c = by_name(a)
    assert c["c1"].rf == 1 + (3 - 1) * 1
    assert c["c2"].rf == c["c1"].rf + (3 - 1) * 1
    # jump is 2 after c2; dilation 2 makes k_eff = 2*(3-1)+1 = 5
    assert c["c3"].rf == c["c2"].rf + (5 - 1) * 2
    pool_rf = c["c3"].rf + (2 - 1) * 2
    assert c["c4"].rf == pool_rf + (5 - 1) * 4
    assert c["c2"].out_hw == (16, 16) and c["c4"].out_hw == (8, 8)
    assert c["c3"].flops == 3 * 3 * 8 * 16 * 16 * 16
    assert c["c3"].params == 3 * 3 * 8 * 16 + 16
    assert c["c4"].kernel == (5, 3)
    expected_params = sum(x.params for x in a.layers) + 10 * 16 + 10
    assert a.shapes.params == expected_params
    assert a.shapes.flops == sum(x.flops for x in a.layers) + 16 * 10  # Gemm counted
    assert a.shapes.unknown_ops == {}


def test_macroblocks_by_resolution_and_levels():
    g = GraphBuilder((1, 3, 64, 64))
    x = g.relu(g.conv(g.input.name, 3, 8, name="a"))            # 64 -> level 0
    x = g.relu(g.conv(x, 8, 8, stride=2, name="b"))             # 32 -> level 1
    x = g.relu(g.conv(x, 8, 8, pad=0, name="valid"))            # 30 -> round(log2(64/30)) = 1
    x = g.relu(g.conv(x, 8, 8, stride=2, name="d"))             # 15 -> round(log2(64/15)) = 2
    a = analyze(g.build([classifier(g, x, 8)]))
    levels = {mb.level: set(mb.layers) for mb in a.macroblocks}
    assert levels == {0: {"a"}, 1: {"b", "valid"}, 2: {"d"}}
    assert [mb.index for mb in a.macroblocks] == [0, 1, 2]
    assert a.macroblocks[1].out_hw == (32, 32)  # the largest member
    assert round(math.log2(64 / 30)) == 1


def test_branches_take_max_and_se_gate_does_not_count():
    g = GraphBuilder((1, 4, 16, 16))
    x = g.relu(g.conv(g.input.name, 4, 8, name="stem"))
    long = g.conv(g.relu(g.conv(x, 8, 8, name="b1")), 8, 8, name="b2")
    res = g.relu(g.op("Add", [long, x]))
    # squeeze-and-excitation: global pool -> 1x1 convs -> sigmoid gate multiplies the map
    s = g.op("GlobalAveragePool", [res])
    s = g.relu(g.conv(s, 8, 2, 1, name="se_reduce"))
    s = g.op("Sigmoid", [g.conv(s, 2, 8, 1, name="se_expand")])
    gated = g.op("Mul", [res, s])
    after = g.relu(g.conv(gated, 8, 8, name="after"))
    a = analyze(g.build([classifier(g, after, 8)]))
    c = by_name(a)
    assert c["b2"].rf == 3 + 2 + 2
    assert c["after"].rf == max(c["b2"].rf, c["stem"].rf) + 2  # not infinite: the gate is broadcast
    assert c["se_reduce"].rf is None and c["se_expand"].rf is None
    assert "se_reduce" not in a.macroblock_of()


def test_resize_halves_the_jump():
    g = GraphBuilder((1, 3, 16, 16))
    x = g.relu(g.conv(g.input.name, 3, 4, stride=2, name="down"))   # jump 2
    scales = g.const(np.array([1, 1, 2, 2], np.float32))
    x = g.op("Resize", [x, "", scales], mode="nearest")               # jump 1
    x = g.relu(g.conv(x, 4, 4, name="up"))
    a = analyze(g.build([x]))
    c = by_name(a)
    assert c["up"].rf == c["down"].rf + (3 - 1) * 1
    assert c["up"].out_hw == (16, 16)


def test_unknown_op_is_counted_not_fatal():
    g = GraphBuilder((1, 3, 8, 8))
    x = g.conv(g.input.name, 3, 4, name="c")
    x = g.op("Softsign", [x])
    x = g.op("Hardmax", [x], axis=1)
    a = analyze(g.build([g.relu(g.conv(x, 4, 4, name="d"))]))
    assert a.shapes.unknown_ops == {"Hardmax": 1}
    assert by_name(a)["d"].rf == 5
    frozen = [grp for grp in a.channels.groups if grp.frozen and "Hardmax" in grp.frozen]
    assert frozen, "a group touched by an op without a rule is frozen, naming the op"


def test_dynamic_hw_needs_input_shape():
    g = GraphBuilder(("N", 3, "H", "W"))
    model = g.build([g.relu(g.conv(g.input.name, 3, 4, name="c"))])
    with pytest.raises(MBSError, match="--input-shape"):
        analyze(model)
    a = analyze(model, input_shape=(1, 3, 20, 20))
    assert a.layers[0].out_hw == (20, 20) and a.loaded.batch_dynamic


def test_not_a_cnn_is_refused():
    g = GraphBuilder((1, 3, 8, 8))
    flat = g.op("Flatten", [g.input.name])
    w = g.const(np.ones((192, 4), np.float32))
    with pytest.raises(MBSError, match="not a CNN|no Conv"):
        analyze(g.build([g.op("MatMul", [flat, w])]))


def test_input_model_is_not_modified():
    g = GraphBuilder(("N", 3, 8, 8))
    model = g.build([g.relu(g.conv(g.input.name, 3, 4, name="c"))])
    before = model.SerializeToString()
    analyze(model)
    assert model.SerializeToString() == before


def test_nhwc_input_detected():
    g = GraphBuilder((1, 12, 12, 3))
    x = g.op("Transpose", [g.input.name], perm=[0, 3, 1, 2])
    a = analyze(g.build([g.relu(g.conv(x, 3, 4, name="c"))]))
    assert a.loaded.input.layout == "NHWC" and a.L == 12


def test_external_data_is_loaded(tmp_path):
    import onnx
    g = GraphBuilder((1, 3, 8, 8))
    model = g.build([g.relu(g.conv(g.input.name, 3, 64, name="c"))])
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, size_threshold=0, location="m.data")
    assert (tmp_path / "m.data").exists()
    a = analyze(path)
    assert a.layers[0].params == 64 * 3 * 9 + 64
    assert np.isfinite(a.shapes.params)


def test_digest_covers_the_external_data_file(tmp_path):
    """A model whose weights change only in its .data file gets a new sha256 (stale stats and plans are refused)."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    g = GraphBuilder((1, 3, 8, 8))
    model = g.build([g.relu(g.conv(g.input.name, 3, 64, name="c"))])
    inline = tmp_path / "inline.onnx"
    onnx.save(model, inline)
    assert analyze(inline).loaded.sha256 == hashlib.sha256(inline.read_bytes()).hexdigest()
    digests = []
    for scale in (1.0, 2.0):
        changed = onnx.ModelProto.FromString(model.SerializeToString())
        weight = changed.graph.initializer[0]
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * scale, weight.name))
        onnx.save(changed, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0, location="m.data")
        digests.append(analyze(tmp_path / "m.onnx").loaded.sha256)
    assert digests[0] != digests[1]


def test_spec_check_value_mobilenet_v1_rf_315():
    """docs/algorithm.md §3: Keras/TF-slim MobileNetV1 at 224 — last conv RF = 315 (widths do not matter for RF)."""
    g = GraphBuilder((1, 3, 224, 224))
    x = g.relu(g.conv(g.input.name, 3, 4, stride=2))
    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    for s in strides:
        x = g.relu(g.conv(x, 4, 4, 3, stride=s, group=4))  # depthwise
        x = g.relu(g.conv(x, 4, 4, 1))                     # pointwise
    a = analyze(g.build([classifier(g, x, 4)]))
    assert a.layers[-1].rf == 315
    assert [mb.out_hw for mb in a.macroblocks] == [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7)]


def test_spec_check_value_vgg16_rf_212():
    g = GraphBuilder((1, 3, 224, 224))
    x = g.input.name
    for convs in (2, 2, 3, 3, 3):
        for _ in range(convs):
            x = g.relu(g.conv(x, 3 if x == g.input.name else 4, 4))
        last_conv = x
        x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    a = analyze(g.build([x]))
    # the often-quoted "VGG-16: 212" is the field after pool5; conv5_3 itself has 196 = 212 - (2-1)*16
    assert a.shapes.fields[x].rf == 212
    assert a.layers[-1].rf == 196 and a.layers[-1].output == g.nodes[-3].output[0]
    assert last_conv
    assert len(a.macroblocks) == 5 and a.macroblocks[0].out_hw == (224, 224)


def test_spec_inception_valid_padding_levels():
    from onnxmbs.graph.macroblocks import level_of
    from onnxmbs.graph.shapes import ConvLayer

    def conv(h):
        return ConvLayer(name=str(h), index=0, input="x", output="y", weight="w", bias=None, in_channels=1,
                         out_channels=1, groups=1, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), out_hw=(h, h),
                         rf=3, flops=1, params=1)
    levels = {h: level_of(conv(h), 299) for h in (149, 147, 73, 71, 35, 17, 8)}
    assert levels == {149: 1, 147: 1, 73: 2, 71: 2, 35: 3, 17: 4, 8: 5}


def test_a_channels_last_linear_keeps_the_receptive_field():
    """ConvNeXt's pointwise Linear layers are MatMuls on (N, H, W, C): per position, not global pooling."""
    g = GraphBuilder(("N", 3, 16, 16))
    x = g.conv(g.input.name, 3, 8, name="c1")
    last = g.op("Transpose", [x], perm=[0, 2, 3, 1])
    mixed = g.op("MatMul", [last, g.const(np.ones((8, 8), np.float32))])
    y = g.conv(g.op("Transpose", [mixed], perm=[0, 3, 1, 2]), 8, 8, name="c2")
    a = analyze(g.build([y]))
    assert [c.rf for c in a.layers] == [3, 5]
