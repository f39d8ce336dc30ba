"""``blocks --reconstruct``: the layers that read a removed block's join are found by walking the graph
(checked by name on a graph built here) and re-fitted so that their output matches the original's
(the error measured here with onnxruntime, before and after); the CLI records what it did."""
from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner

from onnxmbs.blocks.discover import find_blocks
from onnxmbs.blocks.refit import fits_after, reconstruct_shallow
from onnxmbs.blocks.remove import remove_blocks
from onnxmbs.cli import main
from onnxmbs.compact.reconstruct import ReconstructOptions
from onnxmbs.graph.edit import expose
from onnxmbs.graph.load import load_model
from onnxmbs.runtime.session import open_session
from onnxmbs.stats.measure import CalibrationOptions
from test_blocks import data_for, dynamic, residual_net


def values(model: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    sess = open_session(expose(model, [name]))
    return sess.run([name], {"input": x})[0].astype(np.float64)


def test_the_layer_after_a_removed_block_is_refitted_to_the_original():
    model = dynamic(residual_net())
    loaded = load_model(model)
    blocks = {b.join: b for b in find_blocks(loaded)}
    removed = [blocks["b1_add"]]
    shallow = remove_blocks(model, removed, check=True)
    plan = fits_after(shallow, model, removed)
    # b1_add -> b1_out (Relu) -> b2_c1 (the next block's first conv) and b2_add (a join: the path stops)
    assert [f.name for f in plan.fits] == ["b2_c1"]
    x, _ = data_for(model, n=64)
    target = plan.fits[0].y
    want = values(model, target, x)

    def error(m):
        return np.linalg.norm(values(m, target, x) - want) / np.linalg.norm(want)

    options = ReconstructOptions(data=CalibrationOptions(data=x, batch_size=16, progress=False), positions=64,
                                 ridge=1e-6)
    result = reconstruct_shallow(shallow, model, removed, loaded, options)
    # every one of the 8x8 output positions is sampled, so the fit is the least-squares optimum over the
    # 3x3 patches (plus bias) of the shallow model's input to b2_c1 — computed here with numpy
    conv = next(n for n in shallow.graph.node if n.name == "b2_c1")
    xin = np.pad(values(shallow, conv.input[0], x), ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([xin[:, :, i:i + 8, j:j + 8] for i in range(3) for j in range(3)], axis=2)  # N,C,9,8,8
    rows = patches.transpose(0, 3, 4, 1, 2).reshape(len(x) * 64, -1)
    rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
    ys = want.transpose(0, 2, 3, 1).reshape(len(rows), -1)
    best = np.linalg.norm(rows @ np.linalg.lstsq(rows, ys, rcond=None)[0] - ys) / np.linalg.norm(ys)
    assert best < error(shallow)
    assert error(result.model) <= best * 1.01 + 1e-6
    assert result.layers[0].error_fitted < result.layers[0].error_inherited
    assert [len(t.dims) for t in result.model.graph.initializer] == [len(t.dims) for t in shallow.graph.initializer]


def test_the_last_block_reaches_the_classifier_through_pooling(tmp_path):
    model = dynamic(residual_net(shared=False))
    onnx.save(model, str(tmp_path / "m.onnx"))
    x, y = data_for(model)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    res = CliRunner().invoke(main, ["blocks", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--remove",
                                    "2", "--reconstruct", "-o", str(tmp_path / "b.json"), "--output-model",
                                    str(tmp_path / "s.onnx")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "b.json").read_text())
    rec = doc["reconstruction"]
    assert rec["layers"] and rec["images"] == len(x) and doc["summary"]["accuracy_after"] == rec["score_after"]
    sess = open_session(str(tmp_path / "s.onnx"))
    top1 = float(np.mean(sess.run(None, {"input": x})[0].argmax(1) == y))
    assert abs(top1 - rec["score_after"]) < 1e-9  # the written model scores what the plan says
    assert "reconstruct" in res.output


def test_rescore_refit_scores_the_rounds_on_the_refitted_model(tmp_path):
    """``--rescore refit``: after each removal the model is re-fitted, and the next round's scores (and the
    accuracy recorded for the removal) are those of the re-fitted model — recomputed here."""
    from onnxmbs.blocks.greedy import Stop, prune_blocks
    from onnxmbs.data.labelled import open_labelled

    model = dynamic(residual_net())
    loaded = load_model(model)
    x, y = data_for(model)
    data = open_labelled((x, y), shape=loaded.input.shape, layout="NCHW")
    options = ReconstructOptions(data=CalibrationOptions(data=x, batch_size=16, progress=False))
    plan = prune_blocks(model, data, stop=Stop(remove=2), rescore="refit", reconstruct=options).plan
    assert plan.settings.rescore == "refit" and len(plan.rounds) == 2
    first = {b.id: b for b in find_blocks(loaded)}[plan.rounds[0].removed]
    refitted = reconstruct_shallow(remove_blocks(model, [first], check=True), model, [first], loaded, options).model
    sess = open_session(refitted)
    top1 = float(np.mean(sess.run(None, {"input": x})[0].argmax(1) == y))
    assert plan.rounds[0].accuracy == top1  # confirmed by round 2's pass over the re-fitted model
    res = CliRunner().invoke(main, ["blocks", "m.onnx", "--data", "d.npz", "--remove", "1", "--rescore", "refit"])
    assert res.exit_code == 2 and "add --reconstruct" in res.output


def test_a_block_whose_join_is_gathered_by_a_concat_refits_the_conv_after_it():
    """C2f in small: two bottlenecks on the second half of cv1, every stage concatenated, then cv2. Removing the
    first bottleneck re-fits the second's first conv and cv2 (through the Concat), and cv2 comes closer."""
    from graphs import GraphBuilder, classifier

    g = GraphBuilder(("N", 3, 8, 8), seed=4)
    x = g.relu(g.conv("input", 3, 8, name="cv1"), name="cv1_r")
    a, b = g.op("Split", [x, g.const(np.array([4, 4], np.int64))], axis=1, outputs=2, name="split")
    parts = [a, b]
    for i in (1, 2):
        h = g.conv(g.relu(g.conv(parts[-1], 4, 4, name=f"m{i}_c1"), name=f"m{i}_r"), 4, 4, name=f"m{i}_c2")
        parts.append(g.op("Add", [parts[-1], h], name=f"m{i}_add"))
    y = g.relu(g.conv(g.op("Concat", parts, axis=1, name="cat"), 16, 8, 1, name="cv2"), name="cv2_r")
    model = g.build([classifier(g, y, 8, classes=5)])
    loaded = load_model(model)
    removed = [{b.join: b for b in find_blocks(loaded)}["m1_add"]]
    shallow = remove_blocks(model, removed, check=True)
    assert [f.name for f in fits_after(shallow, model, removed).fits] == ["m2_c1", "cv2"]
    x_fit, _ = data_for(model, n=48)
    options = ReconstructOptions(data=CalibrationOptions(data=x_fit, batch_size=16, progress=False), positions=64,
                                 ridge=1e-6)
    result = reconstruct_shallow(shallow, model, removed, loaded, options)
    want = values(model, "cv2_out", x_fit)

    def error(m):
        return np.linalg.norm(values(m, "cv2_out", x_fit) - want) / np.linalg.norm(want)

    assert error(result.model) < 0.5 * error(shallow)
