"""onnxmbs.compact.reconstruct: least-squares re-fitting of the layers behind each cut, on tiny graphs."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from graphs import GraphBuilder
from onnx import numpy_helper

from onnxmbs.cli.compact import compact as compact_cmd
from onnxmbs.compact.fits import plan_fits
from onnxmbs.compact.index import tensor_layouts
from onnxmbs.compact.ranking import eliminate
from onnxmbs.compact.reconstruct import ReconstructOptions
from onnxmbs.compact.writer import compact_model
from onnxmbs.graph.analysis import analyze
from onnxmbs.graph.costs import count_costs
from onnxmbs.graph.load import load_model
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.planning.planner import summarize
from onnxmbs.planning.scaling import param_specs
from onnxmbs.stats.measure import CalibrationOptions

SHAPE = ("N", 3, 12, 12)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def images(n: int = 24, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE[1:])).astype(np.float32)


def dependent_conv(g: GraphBuilder, x: str, cin: int, kept: int, dropped: int, *, blocks: int = 1) -> str:
    """A conv whose last ``dropped`` outputs of each of ``blocks`` blocks are small linear combinations
    of that block's first ``kept`` outputs (bias included), so they carry nothing new."""
    rng = g.rng
    ws, bs = [], []
    for _ in range(blocks):
        w = rng.standard_normal((kept, cin, 3, 3)).astype(np.float32) * 0.5
        b = rng.standard_normal(kept).astype(np.float32) * 0.1
        mix = rng.standard_normal((dropped, kept)).astype(np.float32) * 0.05  # small: L1 keeps the first ones
        ws += [w, np.einsum("dk,kcij->dcij", mix, w)]
        bs += [b, mix @ b]
    weight, bias = g.const(np.concatenate(ws), "w"), g.const(np.concatenate(bs), "b")
    return g.op("Conv", [x, weight, bias], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="producer")


def cut_plan(model: onnx.ModelProto, widths: dict[str, int]) -> tuple[dict, object]:
    """The identity plan with the groups produced by the named convs cut to the given widths."""
    analysis = analyze(model)
    doc = plan_from_statistics(analysis, None, z=1e6).document.to_json()
    chosen = {g.id: widths[p] for g in analysis.channels.groups for p in g.producers if p in widths}
    for entry in doc["groups"]:
        entry["compact_channels"] = chosen.get(entry["id"], entry["channels"])
    doc["summary"]["params_compact"] = summarize(param_specs(analysis), {
        e["id"]: e["compact_channels"] for e in doc["groups"]}).params_compact
    return doc, analysis


def options(data: np.ndarray, *, ridge: float = 0.0, positions: int = 64) -> ReconstructOptions:
    return ReconstructOptions(data=CalibrationOptions(data=data, preprocess=None, batch_size=8), positions=positions,
                              ridge=ridge)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def linear_graph() -> onnx.ModelProto:
    g = GraphBuilder(SHAPE, seed=11)
    a = dependent_conv(g, "input", 3, kept=4, dropped=4)
    return g.build([g.conv(a, 8, 6, name="consumer")])


def test_dropped_linear_combinations_are_recovered_to_float_precision():
    model = linear_graph()
    doc, analysis = cut_plan(model, {"producer": 4})
    x, held = images(), images(6, seed=7)
    inherited = compact_model(model, doc, select="l1")
    assert inherited.kept[[g for g, k in inherited.kept.items() if len(k) == 4][0]] == (0, 1, 2, 3)
    rebuilt = compact_model(model, doc, select="l1", reconstruct=options(x))
    want = run(model, held)
    assert relative_error(run(inherited.model, held), want) > 1e-2  # the cut alone loses information
    assert relative_error(run(rebuilt.model, held), want) < 1e-4  # images the fit never saw
    rec = rebuilt.reconstruction
    assert [r.name for r in rec.layers] == ["consumer"] and rec.skipped == ()
    assert rec.layers[0].error_fitted < 1e-8 < rec.layers[0].error_inherited
    assert rebuilt.params_compact == inherited.params_compact == doc["summary"]["params_compact"]
    onnx.checker.check_model(rebuilt.model, full_check=True)


def residual_graph() -> onnx.ModelProto:
    """A dependent conv read by two convs whose outputs are added, then a ReLU and one more conv."""
    g = GraphBuilder(SHAPE, seed=12)
    a = dependent_conv(g, "input", 3, kept=4, dropped=3)
    b = g.conv(a, 7, 6, name="branch_b")
    c = g.conv(a, 7, 6, name="branch_c")
    joined = g.relu(g.op("Add", [b, c], name="join"))
    return g.build([g.conv(joined, 6, 5, name="after")])


def test_layer_after_a_residual_join_matches_the_sum():
    model = residual_graph()
    doc, analysis = cut_plan(model, {"producer": 4})
    result = compact_model(model, doc, select="l1", reconstruct=options(images()))
    held = images(6, seed=8)
    assert relative_error(run(result.model, held), run(model, held)) < 1e-4
    from onnxmbs.compact.select import select_channels
    from onnxmbs.compact.index import identity_layouts
    widths = {e["id"]: e["compact_channels"] for e in doc["groups"]}
    keep = select_channels(analysis, doc, widths, identity_layouts(analysis), select="l1").keep
    fits = {f.name: f for f in plan_fits(analysis, tensor_layouts(analysis, keep), analysis.loaded.constants).fits}
    assert set(fits) == {"branch_b", "branch_c", "after"}
    assert fits["branch_b"].join is None  # its partner is fitted after it
    assert fits["branch_c"].join.other == "branch_b_out" and fits["branch_c"].wave > fits["branch_b"].wave
    assert fits["after"].wave > fits["branch_c"].wave  # behind the ReLU of the join
    assert {r.name: r.residual for r in result.reconstruction.layers}["branch_c"] is True


def grouped_graph() -> onnx.ModelProto:
    """A dependent conv (2 blocks) read by a grouped conv (2 groups), then a depthwise and a pointwise conv."""
    g = GraphBuilder(SHAPE, seed=13)
    a = dependent_conv(g, "input", 3, kept=2, dropped=2, blocks=2)
    x = g.conv(a, 8, 6, group=2, name="grouped")
    x = g.conv(g.relu(x), 6, 6, group=6, name="depthwise")
    return g.build([g.conv(x, 6, 5, k=1, name="pointwise")])


def test_grouped_and_depthwise_consumers():
    model = grouped_graph()
    doc, analysis = cut_plan(model, {"producer": 4})
    inherited = compact_model(model, doc, select="l1")
    assert sorted(inherited.kept[g] for g in inherited.kept if len(inherited.kept[g]) == 4) == [(0, 1, 4, 5)]
    result = compact_model(model, doc, select="l1", reconstruct=options(images(40)))
    held = images(6, seed=9)
    assert relative_error(run(result.model, held), run(model, held)) < 1e-4
    assert relative_error(run(inherited.model, held), run(model, held)) > 1e-2
    assert [r.name for r in result.reconstruction.layers] == ["grouped", "depthwise", "pointwise"]
    groups = [onnx.helper.get_attribute_value(a) for n in result.model.graph.node for a in n.attribute
              if a.name == "group"]
    assert groups == [2, 6, 1]  # producer has no group attribute
    costs = count_costs(*(lambda m: (m.graph, m.shapes, m.constants))(load_model(result.model)), batch=1)
    assert costs.params == inherited.params_compact  # values changed, never shapes


def test_depthwise_reading_an_exact_cut_is_not_refitted():
    g = GraphBuilder(SHAPE, seed=14)
    a = g.conv("input", 3, 8, name="producer")
    x = g.conv(g.relu(a), 8, 8, group=8, name="dw")
    model = g.build([g.conv(x, 8, 4, k=1, name="pw")])
    doc, _ = cut_plan(model, {"producer": 5})
    result = compact_model(model, doc, reconstruct=options(images(8), ridge=1e-3))
    assert [r.name for r in result.reconstruction.layers] == ["pw"]


def test_greedy_elimination_keeps_what_cannot_be_rebuilt():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 5))
    z[:, 2] *= 0.01  # tiny but independent: L1 would drop it first
    z[:, 3] = z[:, 0] + z[:, 1]  # redundant
    scores = eliminate(z.T @ z)
    assert np.argmin(scores) in (0, 1, 3)
    assert scores[2] > min(scores[0], scores[1], scores[3])


def add_mean_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its (N, C, H, W) output averaged to (N, C) class scores."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    out = model.graph.output[0]
    model.graph.node.append(onnx.helper.make_node("ReduceMean", [out.name], ["scores"], axes=[2, 3], keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", 6]))
    return model


def test_greedy_selection_reconstruction_and_accuracy_from_the_cli(tmp_path):
    model = linear_graph()
    doc, _ = cut_plan(model, {"producer": 4})
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    np.save(tmp_path / "x.npy", images(16))
    held = images(20, seed=4)
    scores = run(model, held).mean(axis=(2, 3))  # labels: the original's own class (mean over positions)
    labels = scores.argmax(1)
    labels[:5] = (labels[:5] + 1) % scores.shape[1]  # 5 of 20 wrong: the original scores 75 %
    model = add_mean_head(model)
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    doc, _ = cut_plan(model, {"producer": 4})
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    np.savez(tmp_path / "eval.npz", x=held, y=labels)
    out = tmp_path / "c.onnx"
    res = CliRunner().invoke(compact_cmd, [str(tmp_path / "m.onnx"), "--plan", str(tmp_path / "plan.json"),
                                           "-o", str(out), "--reconstruct", "--select", "greedy", "--data",
                                           str(tmp_path / "x.npy"), "--preprocess", "raw", "--repeats", "0",
                                           "--ridge", "0", "--eval-data", str(tmp_path / "eval.npz")])
    assert res.exit_code == 0, res.output
    assert "reconstruct 1 layer(s) re-fitted" in res.output
    assert "top-1 75.00% -> 75.00% (+0.00 points); same prediction on 100.00% of 20" in res.output
    record = json.loads((tmp_path / "c.onnx.json").read_text())
    assert record["select"] == "greedy" and record["reconstruction"]["layers"][0]["name"] == "consumer"
    assert record["accuracy"]["original"]["top1"] == 0.75 and record["accuracy"]["compact"]["agreement"] == 1.0
    same = CliRunner().invoke(compact_cmd, [str(tmp_path / "m.onnx"), "--plan", str(tmp_path / "plan.json"),
                                            "-o", str(tmp_path / "e.onnx"), "--reconstruct", "--data",
                                            str(tmp_path / "eval.npz"), "--eval-data", str(tmp_path / "eval.npz")])
    assert same.exit_code == 2 and "did not see" in same.output
    compact = onnx.load(str(out))
    held = images(4, seed=3)
    assert relative_error(run(compact, held), run(model, held)) < 1e-4  # greedy kept a spanning set
    bad = CliRunner().invoke(compact_cmd, [str(tmp_path / "m.onnx"), "--plan", str(tmp_path / "plan.json"),
                                           "-o", str(tmp_path / "d.onnx"), "--reconstruct"])
    assert bad.exit_code == 2 and "--data" in bad.output


def test_reconstruction_keeps_weights_it_cannot_fit():
    g = GraphBuilder(SHAPE, seed=15)
    a = g.conv("input", 3, 6, name="producer")
    w = numpy_helper.to_array(g.inits[-2])
    # the consumer reads its weights through a computed tensor: listed, left as inherited
    weight = g.op("Identity", [g.op("Relu", [g.const(np.abs(w[:, :, :, :]).transpose(1, 0, 2, 3).copy())])])
    x = g.op("Conv", [g.relu(a), weight], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="computed")
    model = g.build([x])
    analysis = analyze(model)
    keep = {gr.id: np.arange(min(gr.channels, 4) if "producer" in gr.producers else gr.channels)
            for gr in analysis.channels.groups}
    plan = plan_fits(analysis, tensor_layouts(analysis, keep), analysis.loaded.constants)
    assert plan.fits == () and plan.skipped == (("computed", "its weights are computed, not constant"),)


def test_ridge_pulls_towards_the_inherited_weights():
    from onnxmbs.compact.lsq import NormalEquations

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 1, 6))  # 3 rows, 6 unknowns: under-determined
    w_true, w0 = rng.standard_normal((1, 6, 2)), rng.standard_normal((1, 6, 2))
    eq = NormalEquations(1, 6, 2)
    eq.add(x, np.einsum("rgd,gdo->rgo", x, w_true))
    np.testing.assert_allclose(eq.solve(w0, 1e6), w0, atol=1e-4)  # strong ridge: stays at the inherited
    fitted = eq.solve(w0, 1e-9)
    assert eq.residual(fitted) < 1e-8 < eq.residual(w0)  # weak ridge: fits the rows exactly
    assert np.isfinite(eq.solve(w0, 0.0)).all()  # a singular system without a ridge still gets an answer


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 1.0])
def test_fitted_error_without_the_product_equals_the_direct_one(ridge):
    """fit()'s error of the solution (from the normal equations' identity) is residual(solution), and its
    error of the inherited weights is residual(w0), for grouped blocks with noisy targets."""
    from onnxmbs.compact.lsq import NormalEquations

    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 3, 8))
    y = np.einsum("rgd,gdo->rgo", x, rng.standard_normal((3, 8, 4))) + 0.3 * rng.standard_normal((40, 3, 4))
    w0 = rng.standard_normal((3, 8, 4))
    eq = NormalEquations(3, 8, 4)
    eq.add(x, y)
    sol, inherited, fitted = eq.fit(w0, ridge)
    np.testing.assert_allclose(sol, eq.solve(w0, ridge))
    assert inherited == pytest.approx(eq.residual(w0), rel=1e-9)
    assert fitted == pytest.approx(eq.residual(sol), rel=1e-6) and 0 < fitted < inherited


def test_wide_blocks_accumulate_the_same_sums_by_syrk(monkeypatch):
    """Blocks wider than SYRK_DIM take Σ xᵀx as an upper triangle (syrk) folded in when read: the same
    symmetric sums as the direct product, over several flushes."""
    from onnxmbs.compact import lsq

    pytest.importorskip("scipy")
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((30, 2, 12)), rng.standard_normal((30, 2, 3))) for _ in range(3)]
    sums = {}
    for wide in (True, False):
        monkeypatch.setattr(lsq, "SYRK_DIM", 12 if wide else 10**9)
        eq = lsq.NormalEquations(2, 12, 3, buffer=1)  # a flush per batch
        for x, y in batches:
            eq.add(x, y)
        eq.flush()
        assert eq.upper == wide
        sums[wide] = (eq.a.copy(), eq.b.copy(), eq.fit(np.zeros((2, 12, 3)) + 0.1, 1e-3))
    x = np.concatenate([b[0] for b in batches]).astype(np.float32).astype(np.float64)
    want = np.einsum("rgd,rge->gde", x, x)
    np.testing.assert_allclose(sums[True][0], want, rtol=1e-5)
    np.testing.assert_allclose(sums[True][0], sums[False][0], rtol=1e-5)
    np.testing.assert_allclose(sums[True][1], sums[False][1], rtol=1e-5)
    (w_up, *errors_up), (w_full, *errors_full) = sums[True][2], sums[False][2]  # the solve reads the triangle
    np.testing.assert_allclose(w_up, w_full, rtol=1e-6)
    np.testing.assert_allclose(errors_up, errors_full, rtol=1e-6)


def test_fewer_sampled_rows_than_unknowns_is_reported(caplog):
    """2 images × 8 positions = 16 rows for a 3×3 conv over 4 kept channels (36 weights + a bias per output)."""
    model = linear_graph()
    doc, _ = cut_plan(model, {"producer": 4})
    with caplog.at_level("WARNING", logger="onnxmbs.compact.reconstruct"):
        rebuilt = compact_model(model, doc, select="l1", reconstruct=options(images(2), positions=8))
    (layer,) = rebuilt.reconstruction.layers
    assert (layer.rows, layer.inputs, layer.underdetermined) == (2 * 8, 4 * 3 * 3 + 1, True)
    assert "fewer sampled rows than unknowns" in caplog.text
    assert rebuilt.reconstruction.to_json()["layers"][0]["inputs"] == 37
    enough = compact_model(model, doc, select="l1", reconstruct=options(images(), positions=64))
    assert not enough.reconstruction.layers[0].underdetermined
