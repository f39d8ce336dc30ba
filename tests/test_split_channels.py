"""Split and Slice along the channel axis (YOLO's C2f/C3k2 ``chunk``): each output takes its range of the
channels, the groups are cut at the bounds, and the compact graph gets the compact sizes or bounds."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import GraphBuilder, classifier
from onnx import numpy_helper

from onnxmbs.compact.writer import compact_model
from onnxmbs.graph.analysis import analyze
from onnxmbs.planning.planner import summarize
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.planning.scaling import param_specs
from test_reconstruct import dependent_conv, options, relative_error

SHAPE = ("N", 3, 16, 16)
BIG = np.iinfo(np.int64).max
FORMS = ("split_input", "split_equal", "num_outputs", "split_attribute", "slices", "negative_slices", "chunk")
OPSET = {"num_outputs": 18, "split_attribute": 11}


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def sample(batch: int = 3) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, *SHAPE[1:])).astype(np.float32)


def halves(g: GraphBuilder, x: str, c: int, form: str) -> tuple[str, str]:
    """``x`` (2c channels) cut into its first and second c channels, in one of the exporters' forms."""
    if form == "split_input":
        return tuple(g.op("Split", [x, g.const(np.array([c, c], np.int64))], axis=1, outputs=2))
    if form == "split_equal":
        return tuple(g.op("Split", [x], axis=1, outputs=2))
    if form == "num_outputs":
        return tuple(g.op("Split", [x], axis=1, num_outputs=2, outputs=2))
    if form == "split_attribute":
        return tuple(g.op("Split", [x], axis=1, split=[c, c], outputs=2))
    if form == "chunk":
        return chunk(g, x)
    bounds = [(0, c), (c, BIG)] if form == "slices" else [(-2 * c, -c), (-c, 2 * c)]
    return tuple(g.op("Slice", [x, g.const(np.array([s], np.int64)), g.const(np.array([e], np.int64)),
                                g.const(np.array([1], np.int64))]) for s, e in bounds)


def chunk(g: GraphBuilder, x: str) -> tuple[str, str]:
    """``torch.chunk(x, 2, dim=1)`` as the TorchScript exporter writes it: bounds computed from ``Shape(x)[1]``."""
    one = g.const(np.array([1], np.int64))
    width = g.op("Gather", [g.op("Shape", [x]), g.const(np.array([1], np.int64))], axis=0)
    half = g.op("Div", [g.op("Add", [width, one]), g.const(np.array([2], np.int64))])
    mid, end = g.op("Mul", [half, one]), g.op("Mul", [half, g.const(np.array([2], np.int64))])
    return (g.op("Slice", [x, g.const(np.array([0], np.int64)), mid, one]), g.op("Slice", [x, mid, end, one]))


def kill(g: GraphBuilder, channels: list[int]) -> None:
    """Make the listed outputs of the conv just added always zero after its ReLU (zero filter, bias -1)."""
    w, b = g.inits[-2], g.inits[-1]
    wv, bv = numpy_helper.to_array(w).copy(), numpy_helper.to_array(b).copy()
    wv[channels], bv[channels] = 0.0, -1.0
    w.CopyFrom(numpy_helper.from_array(wv, w.name))
    b.CopyFrom(numpy_helper.from_array(bv, b.name))


def c2f_graph(form: str, *, c: int = 6) -> onnx.ModelProto:
    """stem -> cv1 (2c) -> halves a, b -> bottleneck m on b with the residual b + m -> Concat(a, b, b + m) -> cv2.
    Dead channels: cv1 1 (in a) and c+1, c+2 (in b); m2 1, 2 (so b + m is zero where b is); m1 0."""
    g = GraphBuilder(SHAPE, seed=3)
    stem = g.relu(g.conv("input", 3, 8, name="stem"))
    cv1 = g.conv(stem, 8, 2 * c, 1, name="cv1")
    kill(g, [1, c + 1, c + 2])
    a, b = halves(g, g.relu(cv1), c, form)
    m = g.conv(b, c, c, name="m1")
    kill(g, [0])
    m = g.conv(g.relu(m), c, c, name="m2")
    kill(g, [1, 2])
    r = g.op("Add", [b, g.relu(m)])
    cat = g.op("Concat", [a, b, r], axis=1)
    out = g.relu(g.conv(cat, 3 * c, 8, 1, name="cv2"))
    return g.build([classifier(g, out, 8)], opset=OPSET.get(form, 17))


def group(analysis, producer: str) -> list[int]:
    return [g.id for g in analysis.channels.groups if producer in g.producers]


def cut(model: onnx.ModelProto, widths: dict[int, int]) -> tuple[dict, object]:
    """The identity plan with the given groups cut to the given widths (stats measured: nonzero selection)."""
    analysis = analyze(model)
    from onnxmbs.workflow.plan import plan_model

    doc = plan_model(model, synthetic=4, preprocess="raw", z=1e6).document.to_json()
    for entry in doc["groups"]:
        entry["compact_channels"] = widths.get(entry["id"], entry["channels"])
    doc["summary"]["params_compact"] = summarize(param_specs(analysis), {
        e["id"]: e["compact_channels"] for e in doc["groups"]}).params_compact
    return doc, analysis


@pytest.mark.parametrize("form", FORMS)
def test_each_half_is_a_group_of_its_own(form):
    analysis = analyze(c2f_graph(form))
    chans = analysis.channels
    a, b = chans.conv_output_groups["cv1"]
    widths = {g.id: g.channels for g in chans.groups}
    assert (widths[a], widths[b]) == (6, 6) and a != b
    assert chans.conv_group["m2"] == b  # the residual ties the bottleneck's output to its half
    assert chans.conv_input_groups["cv2"] == (a, b, b)
    frozen = {g.id: g.frozen for g in chans.groups if g.frozen}
    assert not {a, b, chans.conv_group["m1"], chans.conv_group["stem"]} & set(frozen), frozen


@pytest.mark.parametrize("form", FORMS)
def test_dead_channels_of_both_halves_are_removed_exactly(form):
    model = c2f_graph(form)
    analysis = analyze(model)
    a, b = analysis.channels.conv_output_groups["cv1"]
    m1 = analysis.channels.conv_group["m1"]
    doc, _ = cut(model, {a: 5, b: 4, m1: 5})
    result = compact_model(model, doc)
    assert result.kept[a] == (0, 2, 3, 4, 5) and result.kept[b] == (0, 3, 4, 5) and result.kept[m1] == (1, 2, 3, 4, 5)
    x = sample()
    np.testing.assert_allclose(run(result.model, x), run(model, x), rtol=1e-5, atol=1e-5)
    assert result.params_compact == doc["summary"]["params_compact"]
    onnx.checker.check_model(result.model, full_check=True)
    node = next(n for n in result.model.graph.node if n.op_type in ("Split", "Slice"))
    if node.op_type == "Split":  # the compact sizes, written where the form allows them
        inits = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
        sizes = inits[node.input[1]].tolist() if len(node.input) > 1 else next(
            list(x.ints) for x in node.attribute if x.name == "split")
        assert sizes == [5, 4]
        assert "num_outputs" not in {x.name for x in node.attribute}


def test_a_slice_with_a_step_on_the_channel_axis_freezes_what_it_reads():
    g = GraphBuilder(SHAPE, seed=3)
    cv1 = g.relu(g.conv("input", 3, 8, 1, name="cv1"))
    odd = g.op("Slice", [cv1, g.const(np.array([1], np.int64)), g.const(np.array([8], np.int64)),
                         g.const(np.array([1], np.int64)), g.const(np.array([2], np.int64))])
    out = g.relu(g.conv(odd, 4, 4, 1, name="cv2"))
    analysis = analyze(g.build([classifier(g, out, 4)]))
    frozen = {g.id: g.frozen for g in analysis.channels.groups}[analysis.channels.conv_group["cv1"]]
    assert "Slice" in frozen and "channel axis" in frozen


def test_reconstruction_refits_the_layers_behind_each_half():
    """cv1's halves each carry 4 channels and 2 linear combinations of them: cut to 4 each, the bottleneck
    on the second half and the conv after the Concat are re-fitted to float precision."""
    g = GraphBuilder(SHAPE, seed=11)
    cv1 = dependent_conv(g, "input", 3, kept=4, dropped=2, blocks=2)
    a, b = halves(g, cv1, 6, "slices")
    m = g.conv(b, 6, 6, name="m")
    model = g.build([g.conv(g.op("Concat", [a, m], axis=1), 12, 5, name="consumer")])
    analysis = analyze(model)
    groups = analysis.channels.conv_output_groups["producer"]
    doc = plan_from_statistics(analysis, None, z=1e6).document.to_json()
    for entry in doc["groups"]:
        entry["compact_channels"] = 4 if entry["id"] in groups else entry["channels"]
    doc["summary"]["params_compact"] = summarize(param_specs(analysis), {
        e["id"]: e["compact_channels"] for e in doc["groups"]}).params_compact
    x, held = np.random.default_rng(1).standard_normal((24, 3, 16, 16)).astype(np.float32), sample(6)
    inherited = compact_model(model, doc, select="l1")
    rebuilt = compact_model(model, doc, select="l1", reconstruct=options(x))
    assert [inherited.kept[gid] for gid in groups] == [(0, 1, 2, 3)] * 2
    want = run(model, held)
    assert relative_error(run(inherited.model, held), want) > 1e-2
    assert relative_error(run(rebuilt.model, held), want) < 1e-4
    assert sorted(r.name for r in rebuilt.reconstruction.layers) == ["consumer", "m"]
