"""The fast reconstruction (one original pass, the compact model run in segments, stores that spill to disk)
against a direct numpy implementation of the wave-by-wave algorithm it replaced: same fitted weights."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from test_reconstruct import cut_plan, grouped_graph, images, options, residual_graph

from onnxmbs.compact import writer
from onnxmbs.compact.activations import Store
from onnxmbs.compact.fits import plan_fits
from onnxmbs.compact.systems import kept as _kept, usable as _usable
from onnxmbs.compact.writer import compact_model
from onnxmbs.graph.edit import expose


def tensors(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    exposed = expose(model, names, keep_outputs=False)
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def reference(analysis, layouts, consts, original, compact, opts) -> dict[str, np.ndarray]:
    """Wave by wave: all images through both models (the compact one with the weights fitted so far), rows at
    the same seeded positions, normal equations by einsum, ridge solve towards the inherited weights —
    {initializer: (fitted value, wave)}."""
    plan = plan_fits(analysis, layouts, consts)
    model = copy.deepcopy(compact)
    layers, _ = _usable(plan, model, analysis.loaded.shapes)
    index = {f.name: i for i, f in enumerate(plan.fits)}
    x_all, batch = opts.data.data, opts.data.batch_size
    fitted: dict[str, np.ndarray] = {}
    waves: dict[str, int] = {}
    for wave in sorted({layer.fit.wave for layer in layers}):
        for layer in [x for x in layers if x.fit.wave == wave]:
            fit = layer.fit
            partner = [fit.join.other] if fit.join else []
            comp, orig = tensors(model, [fit.x] + partner, x_all), tensors(original, [fit.y] + partner, x_all)
            a = b = 0.0
            for i, s in enumerate(range(0, len(x_all), batch)):
                n = min(batch, len(x_all) - s)
                where = layer.sample(np.random.default_rng([opts.seed, index[fit.name], i]), n, opts.positions)
                part = {k: v[s:s + n] for k, v in comp.items()}
                y = _kept(fit, layer.values(orig[fit.y][s:s + n], where)).astype(np.float64)
                if fit.join:
                    slope = fit.join.slope if fit.out_pos is None else fit.join.slope[fit.out_pos]
                    gap = _kept(fit, layer.values(orig[fit.join.other][s:s + n], where)) - layer.values(
                        part[fit.join.other], where)
                    y = y + gap / slope
                xr, yr = layer.rows(part[fit.x], y, where)
                xr, yr = xr.astype(np.float32), yr.astype(np.float32)  # each batch's products in float32
                a = a + np.einsum("rgd,rge->gde", xr, xr).astype(np.float64)
                b = b + np.einsum("rgd,rgo->gdo", xr, yr).astype(np.float64)
            w0 = layer.w0()
            lam = opts.ridge * np.trace(a, axis1=1, axis2=2)[:, None, None] / a.shape[1]
            sol = np.linalg.solve(a + lam * np.eye(a.shape[1]), b + lam * w0)
            fitted.update(layer.weights(sol))
            waves.update(dict.fromkeys(layer.weights(sol), wave))
        for tensor in model.graph.initializer:  # the next wave reads this wave's weights
            if tensor.name in fitted:
                tensor.CopyFrom(numpy_helper.from_array(fitted[tensor.name], tensor.name))
    return {name: (value, waves[name]) for name, value in fitted.items()}


def close(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def captured(model, doc, opts, monkeypatch):
    seen = {}
    real = writer.refit

    def spy(*args):
        seen["args"] = args
        return real(*args)

    monkeypatch.setattr(writer, "refit", spy)
    result = compact_model(model, doc, select="l1", reconstruct=opts)
    return result, seen["args"]


@pytest.mark.parametrize("graph,ridge", [(residual_graph, 1e-3), (grouped_graph, 0.0), (grouped_graph, 1e-2)])
def test_fast_path_matches_the_wave_by_wave_solve(graph, ridge, monkeypatch):
    model = graph()
    doc, _ = cut_plan(model, {"producer": 4})
    opts = options(images(20), ridge=ridge, positions=16)  # batches of 8: a short last batch too
    result, args = captured(model, doc, opts, monkeypatch)
    want = reference(*args)
    got = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert want and set(want) <= set(got)
    for name, (value, _) in want.items():
        assert close(got[name], value) < 1e-4, name
    stages = result.reconstruction.to_json()["stage_seconds"]
    assert {"original pass", "compact passes", "gram", "solve"} <= set(stages)
    assert all(v >= 0 for v in stages.values())


def test_embedded_model_matches_the_wave_by_wave_solve(monkeypatch):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "models" / "resnet20_digits.onnx"
    model = onnx.load(str(path))
    analysis_doc, analysis = cut_plan(model, {})
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    widths = {}
    for g in analysis.channels.groups:  # halve every group one conv produces on its own (inside the blocks)
        if len(g.producers) == 1 and g.producers[0] in convs[1:]:
            widths[g.producers[0]] = max(1, g.channels // 2)
    doc, _ = cut_plan(model, widths)
    rng = np.random.default_rng(3)
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = rng.random((24, *shape[1:])).astype(np.float32)
    opts = options(x, ridge=1e-3, positions=24)  # more rows than unknowns: well-conditioned
    result, args = captured(model, doc, opts, monkeypatch)
    want = reference(*args)
    got = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert len(result.reconstruction.layers) > 3 and set(want) <= set(got)
    # float32 products: ~1e-4 from the exact solve at wave 0 (either implementation), growing a little per wave
    for name, (value, wave) in want.items():
        assert close(got[name], value) < (3e-4 if wave == 0 else 5e-3), name


def test_store_spills_beyond_its_budget_and_reads_back():
    store = Store(budget=1000)
    values = {i: np.random.default_rng(i).standard_normal((5, 30)).astype(np.float32) for i in range(6)}
    for key, value in values.items():
        store.put(key, value)
    assert store.memory and store.disk  # 1,000 bytes hold one of the 600-byte arrays in memory
    for key, value in values.items():
        np.testing.assert_array_equal(store.get(key), value)
    for key in values:
        store.drop(key)
    assert not store.memory and not store.disk and store.used == 0
    store.put("again", values[1])
    np.testing.assert_array_equal(store.get("again"), values[1])
    store.close()
