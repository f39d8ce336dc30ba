"""Graph edits through onnx-graphsurgeon: expose, extract, rewire, gather_at — new models, inputs untouched."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphs import GraphBuilder
from onnxmbs.errors import MBSError
from onnxmbs.graph.edit import expose, extract, gather_at, rewire


def _residual():
    g = GraphBuilder((1, 4, 8, 8))
    x = g.relu(g.conv(g.input.name, 4, 4, name="stem"), name="r0")
    a = g.relu(g.conv(x, 4, 4, name="c1"), name="r1")
    b = g.conv(a, 4, 4, name="c2")
    join = g.op("Add", [b, x], name="join")
    out = g.relu(join, name="r2")
    return g.build([out]), {"x": x, "a": a, "b": b, "join": join, "out": out}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names=None):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


def _reference(model, names, x):
    """The values of inner tensors, computed the plain onnx.helper way."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for n in names:
        probe.graph.output.append(onnx.ValueInfoProto(name=n))
    return _run(probe, {"input": x}, names)


def test_expose_gives_the_inner_values_and_leaves_the_model_alone():
    model, t = _residual()
    before = model.SerializeToString()
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    exposed = expose(model, [t["x"], t["b"]])
    onnx.checker.check_model(exposed)
    out, xv, bv = _run(exposed, {"input": x})
    ref_x, ref_b, ref_out = _reference(model, [t["x"], t["b"], t["out"]], x)
    np.testing.assert_array_equal(xv, ref_x)
    np.testing.assert_array_equal(bv, ref_b)
    np.testing.assert_array_equal(out, ref_out)
    assert model.SerializeToString() == before


def test_extract_runs_only_the_suffix():
    model, t = _residual()
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    (xv,) = _reference(model, [t["x"]], x)
    suffix = extract(model, [t["x"]], [t["out"]])
    assert {n.name for n in suffix.graph.node} == {"c1", "r1", "c2", "join", "r2"}
    (got,) = _run(suffix, {t["x"]: xv})
    np.testing.assert_allclose(got, _run(model, {"input": x})[0], rtol=1e-6, atol=1e-6)


def test_rewire_bypasses_a_block():
    model, t = _residual()
    x = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(np.float32)
    shallow = rewire(model, {t["join"]: t["x"]}, drop={"c1", "r1", "c2", "join"})
    onnx.checker.check_model(shallow, full_check=True)
    assert [n.name for n in shallow.graph.node] == ["stem", "r0", "r2"]
    assert len(shallow.graph.initializer) == 2  # the stem's weight and bias only
    (xv,) = _reference(model, [t["x"]], x)
    np.testing.assert_array_equal(_run(shallow, {"input": x})[0], np.maximum(xv, 0))


def test_rewire_keeps_an_output_name():
    model, t = _residual()
    graph_out = t["out"]
    shallow = rewire(model, {graph_out: t["x"]}, drop={"r2"})
    assert [o.name for o in shallow.graph.output] == [graph_out]
    x = np.ones((1, 4, 8, 8), np.float32)
    (xv,) = _reference(model, [t["x"]], x)
    np.testing.assert_array_equal(_run(shallow, {"input": x})[0], xv)


def test_unknown_tensors_are_refused():
    model, _ = _residual()
    with pytest.raises(MBSError, match="not in the model"):
        expose(model, ["nope"])
    with pytest.raises(MBSError, match="not in the model"):
        rewire(model, {"nope": "input"})


def test_gather_at_reads_the_tensors_at_the_positions_fed_with_each_run():
    """Two taps of one NCHW tensor at different positions, one of the input, one as (N, M, K) rows: each output is
    the tensor indexed by hand at the fed positions; the given model is unchanged."""
    model, t = _residual()
    before = model.SerializeToString()
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    a, join = _reference(model, [t["a"], t["join"]], x)
    g = gather_at(model, [(t["a"], None), (t["a"], None), ("input", None), (t["join"], 8)])
    at = [np.array([[0, 1, 2], [0, 7, 0]]), np.array([[0, 3, 3]]), np.array([[0, 5, 6]]), np.array([[0, 3], [0, 4]])]
    got = _run(g, {"input": x, **{f"at_{i}": v for i, v in enumerate(at)}})
    np.testing.assert_array_equal(got[0], a[0, :, [1, 7], [2, 0]])
    np.testing.assert_array_equal(got[1], a[0, :, [3], [3]])
    np.testing.assert_array_equal(got[2], x[0, :, [5], [6]])
    np.testing.assert_array_equal(got[3], join.reshape(1, -1, 8)[0, [3, 4]])
    assert model.SerializeToString() == before
