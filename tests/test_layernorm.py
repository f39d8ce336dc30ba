"""Channels-last LayerNorm (ConvNeXt's blocks): cut with the channels it normalises, and the layers behind it
re-fitted because its statistics change with the kept set."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from graphs import GraphBuilder, classifier

from onnxmbs.compact.writer import compact_model
from onnxmbs.graph.analysis import analyze
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.planning.planner import summarize
from onnxmbs.planning.scaling import param_specs
from test_reconstruct import options

SHAPE = ("N", 3, 16, 16)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE[1:])).astype(np.float32)


def convnext_graph(*, axis: int = -1, c: int = 8, hidden: int = 32) -> onnx.ModelProto:
    """stem -> depthwise 3x3 -> NHWC -> LayerNorm -> Linear(4c) -> ReLU -> Linear(c) -> layer scale -> NCHW -> + stem."""
    g = GraphBuilder(SHAPE, seed=4)
    rng = g.rng
    x = g.conv("input", 3, c, name="stem")
    t = g.op("Transpose", [g.conv(x, c, c, group=c, name="dw")], perm=[0, 2, 3, 1])
    scale, bias = (1 + 0.2 * rng.standard_normal(c)).astype(np.float32), (0.1 * rng.standard_normal(c)).astype(np.float32)
    n = g.op("LayerNormalization", [t, g.const(scale), g.const(bias)], axis=axis, epsilon=1e-6, name="ln")

    def linear(v, cin, cout, name):
        w = g.const((rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32), "w")
        return g.op("Add", [g.op("MatMul", [v, w], name=name), g.const((0.1 * rng.standard_normal(cout)).astype(np.float32))])

    h = g.relu(linear(n, c, hidden, "fc1"))
    o = g.op("Mul", [linear(h, hidden, c, "fc2"), g.const((0.5 + rng.random(c)).astype(np.float32))])
    y = g.op("Add", [x, g.op("Transpose", [o], perm=[0, 3, 1, 2])])
    return g.build([classifier(g, g.relu(y), c)])


def stream_and_hidden(analysis) -> tuple[int, int]:
    chans = analysis.channels
    return chans.conv_group["stem"], chans.tensor_chan[next(
        n.output[0] for n in analysis.loaded.graph.node if n.name == "fc1")].segs[0]


def cut_plan(analysis, widths: dict[int, int]) -> dict:
    doc = plan_from_statistics(analysis, None, z=1e6).document.to_json()
    for entry in doc["groups"]:
        entry["compact_channels"] = widths.get(entry["id"], entry["channels"])
    doc["summary"]["params_compact"] = summarize(param_specs(analysis), {
        e["id"]: e["compact_channels"] for e in doc["groups"]}).params_compact
    return doc


def test_layernorm_over_the_channels_keeps_them_and_over_more_axes_freezes_them():
    analysis = analyze(convnext_graph())
    stream, hidden = stream_and_hidden(analysis)
    groups = {g.id: g for g in analysis.channels.groups}
    assert (groups[stream].channels, groups[hidden].channels) == (8, 32) and stream != hidden
    assert groups[stream].frozen is None and groups[hidden].frozen is None
    assert set(groups[stream].producers) >= {"stem", "fc2"}
    wide = analyze(convnext_graph(axis=2))  # NHWC, axis 2: W and C normalised together
    assert "LayerNormalization 'ln' normalises the channels together" in {
        g.id: g.frozen for g in wide.channels.groups}[wide.channels.conv_group["stem"]]


def test_cut_layernorm_counts_exactly_and_reconstruction_absorbs_its_new_statistics():
    model = convnext_graph()
    analysis = analyze(model)
    stream, hidden = stream_and_hidden(analysis)
    identity = compact_model(model, cut_plan(analysis, {}))
    held = images(8, seed=9)
    np.testing.assert_array_equal(run(identity.model, held), run(model, held))
    doc = cut_plan(analysis, {stream: 6, hidden: 24})
    inherited = compact_model(model, doc, select="l1")
    rebuilt = compact_model(model, doc, select="l1", reconstruct=options(images(48, seed=1), ridge=1e-3))
    ln = next(n for n in inherited.model.graph.node if n.op_type == "LayerNormalization")
    inits = {i.name: i for i in inherited.model.graph.initializer}
    assert [list(inits[t].dims) for t in ln.input[1:]] == [[6], [6]]
    assert inherited.params_compact == rebuilt.params_compact == doc["summary"]["params_compact"]
    want = run(model, held)
    err = {name: float(np.linalg.norm(run(m.model, held) - want) / np.linalg.norm(want))
           for name, m in (("inherited", inherited), ("rebuilt", rebuilt))}
    assert err["rebuilt"] < 0.5 * err["inherited"], err
    assert "fc1" in {r.name for r in rebuilt.reconstruction.layers}  # behind the LayerNorm: re-fitted
