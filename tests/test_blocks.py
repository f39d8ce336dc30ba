"""Block pruning on graphs built here: discovery, removal, direct scores, the plan and the CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from graphs import GraphBuilder, classifier
from onnxmbs.blocks.discover import find_blocks
from onnxmbs.blocks.document import BlocksPlan, read_blocks_plan
from onnxmbs.blocks.greedy import Stop, prune_blocks
from onnxmbs.blocks.remove import remove_blocks
from onnxmbs.blocks.scoring import score_blocks
from onnxmbs.cli import main
from onnxmbs.errors import MBSError
from onnxmbs.graph.load import load_model
from onnxmbs.stats.accuracy import runnable
from onnxmbs.data.labelled import open_labelled

C = 4


def conv_params(cin, cout, k=3):
    return cout * cin * k * k + cout


def residual_net(*, shared=False):
    """stem; two identity blocks; a projection block; optionally a block whose inner tensor is reused."""
    g = GraphBuilder((1, 3, 8, 8), seed=3)
    x = g.relu(g.conv("input", 3, C, name="stem"), name="stem_relu")
    for i in (1, 2):
        h = g.relu(g.conv(x, C, C, name=f"b{i}_c1"), name=f"b{i}_r")
        h = g.conv(h, C, C, name=f"b{i}_c2")
        x = g.relu(g.op("Add", [h, x], name=f"b{i}_add"), name=f"b{i}_out")
    h = g.relu(g.conv(x, C, 2 * C, stride=2, name="p_c1"), name="p_r")
    h = g.conv(h, 2 * C, 2 * C, name="p_c2")
    s = g.conv(x, C, 2 * C, 1, stride=2, name="p_proj")
    x = g.relu(g.op("Add", [s, h], name="p_add"), name="p_out")
    if shared:
        inner = g.relu(g.conv(x, 2 * C, 2 * C, name="s_c1"), name="s_r")
        h = g.conv(inner, 2 * C, 2 * C, name="s_c2")
        x = g.relu(g.op("Add", [x, h], name="s_add"), name="s_out")
        x = g.op("Add", [x, inner], name="reuse")  # the branch's inner tensor read outside the branch
    return g.build([classifier(g, x, 2 * C, classes=5)])


def test_discovery_identity_projection_shared():
    blocks = {b.join: b for b in find_blocks(load_model(residual_net(shared=True)))}
    assert set(blocks) == {"b1_add", "b2_add", "p_add", "s_add", "reuse"}
    b1 = blocks["b1_add"]
    assert b1.removable and b1.nodes == ("b1_c1", "b1_r", "b1_c2") and b1.shortcut == "stem_relu_out"
    assert b1.params == 2 * conv_params(C, C) and b1.macs == 2 * (C * C * 9 * 8 * 8)
    p = blocks["p_add"]
    assert not p.removable and "projection" in p.reason
    assert set(p.nodes) == {"p_c1", "p_r", "p_c2", "p_proj"}
    s = blocks["s_add"]
    assert not s.removable and "shared" in s.reason and "s_r_out" in s.reason


def bypass(model, nodes, join, shortcut):
    """The model without ``nodes`` and ``join``; readers of the join's output read ``shortcut``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    out = next(n.output[0] for n in m.graph.node if n.name == join)
    kept = [n for n in m.graph.node if n.name not in (*nodes, join)]
    for n in kept:
        n.input[:] = [shortcut if t == out else t for t in n.input]
    del m.graph.node[:]
    m.graph.node.extend(kept)
    return m


def top1(model, x, y):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float(np.mean(sess.run(None, {"input": x})[0].argmax(1) == y))


def data_for(model, n=40, seed=0):
    """Images and labels: labels are the model's own predictions with a few flipped, so accuracy is not trivial."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x})[0].argmax(1)
    y[: n // 4] = (y[: n // 4] + 1) % 5
    return x, y


def dynamic(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return m


def test_scores_equal_accuracy_of_the_bypassed_model():
    model = dynamic(residual_net())
    x, y = data_for(model)
    loaded = load_model(model)
    data = open_labelled((x, y), shape=loaded.input.shape, layout="NCHW")
    cands = [b for b in find_blocks(loaded) if b.removable]
    result = score_blocks(runnable(loaded), "input", cands, data, batch_size=16)
    assert result.accuracy == pytest.approx(top1(model, x, y)) == pytest.approx(0.75)
    for i in (1, 2):
        expected = top1(bypass(model, (f"b{i}_c1", f"b{i}_r", f"b{i}_c2"), f"b{i}_add",
                               "stem_relu_out" if i == 1 else "b1_out_out"), x, y)
        assert result.scores[f"b{i - 1}"] == pytest.approx(expected)


def test_fixed_batch_model_is_scored_in_padded_batches():
    model = residual_net()  # batch fixed at 1
    x, y = data_for(dynamic(model), n=9)
    loaded = load_model(model)
    data = open_labelled((x, y), shape=loaded.input.shape, layout="NCHW")
    cands = [b for b in find_blocks(loaded) if b.removable]
    result = score_blocks(runnable(loaded), "input", cands, data, fixed_batch=1)
    expected = top1(dynamic(bypass(model, ("b2_c1", "b2_r", "b2_c2"), "b2_add", "b1_out_out")), x, y)
    assert result.scores["b1"] == pytest.approx(expected)


def test_greedy_plan_and_shallow_model(tmp_path):
    model = dynamic(residual_net())
    x, y = data_for(model)
    loaded = load_model(model)
    data = open_labelled((x, y), shape=loaded.input.shape, layout="NCHW")
    result = prune_blocks(model, data, stop=Stop(remove=2))
    plan = result.plan
    assert len(plan.rounds) == 2 and set(plan.removed) == {"b0", "b1"}
    first = plan.rounds[0]
    assert set(first.scores) == {"b0", "b1"} and first.removed == max(first.scores, key=first.scores.get)
    onnx.checker.check_model(result.model, full_check=True)
    inits = {i.name: i for i in result.model.graph.initializer}
    expected_params = sum(int(np.prod(i.dims)) for i in model.graph.initializer) - 4 * conv_params(C, C)
    assert sum(int(np.prod(i.dims)) for i in inits.values()) == expected_params == plan.summary.params_after
    assert plan.summary.params - plan.summary.params_after == 4 * conv_params(C, C)
    assert top1(result.model, x, y) == pytest.approx(plan.summary.accuracy_after)
    assert result.model.graph.input[0] == model.graph.input[0]
    assert [n.name for n in model.graph.node if n.name == "b1_add"]  # the user's model is untouched
    again = BlocksPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan and again.to_json()["schema"] == "onnxmbs.blocks/1"


def test_stop_rules_and_rescore_once():
    model = dynamic(residual_net())
    x, y = data_for(model)
    data = open_labelled((x, y), shape=(1, 3, 8, 8), layout="NCHW")
    once = prune_blocks(model, data, stop=Stop(remove=2), rescore="once").plan
    assert once.rounds[1].scores == {} and len(once.rounds) == 2
    params = once.summary.params
    target = prune_blocks(model, data, stop=Stop(target_param_reduction=conv_params(C, C) * 2 / params)).plan
    assert len(target.rounds) == 1
    strict = prune_blocks(model, data, stop=Stop(max_accuracy_drop=0.0)).plan
    assert all(r.accuracy >= strict.baseline_accuracy for r in strict.rounds)
    with pytest.raises(MBSError, match="stop rule"):
        Stop()


def test_removal_refuses_a_projection_block():
    loaded = load_model(residual_net())
    proj = next(b for b in find_blocks(loaded) if b.join == "p_add")
    with pytest.raises(MBSError, match="not removable"):
        remove_blocks(loaded.model, [proj])


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_blocks_cli_writes_plan_and_model(tmp_path):
    model = dynamic(residual_net())
    onnx.save(model, tmp_path / "m.onnx")
    x, y = data_for(model)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    res = run("blocks", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "--remove", "1", "-o",
              tmp_path / "b.json", "--output-model", tmp_path / "s.onnx")
    assert res.exit_code == 0, res.output
    plan = read_blocks_plan(tmp_path / "b.json")
    assert plan.removed[0] in ("b0", "b1") and "round" in res.output
    assert top1(onnx.load(tmp_path / "s.onnx"), x, y) == pytest.approx(plan.summary.accuracy_after)


def test_blocks_cli_unlabelled_data_and_usage(tmp_path):
    onnx.save(dynamic(residual_net()), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 3, 8, 8), np.float32))
    res = run("blocks", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "--remove", "1", "--metric", "accuracy")
    assert res.exit_code == 2 and "needs labelled data" in res.output  # no labels: accuracy is a usage error
    res = run("blocks", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "--remove", "1")
    assert res.exit_code == 0 and "scored against the original" in res.output  # ... and fidelity the default
    res = run("blocks", tmp_path / "m.onnx", "--data", tmp_path / "d.npz")
    assert res.exit_code == 2 and "stop rule" in res.output


def test_report_shows_the_blocks_plan(tmp_path):
    model = dynamic(residual_net())
    onnx.save(model, tmp_path / "m.onnx")
    x, y = data_for(model)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    assert run("blocks", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "--remove", "2", "-o",
               tmp_path / "b.json").exit_code == 0
    plan = read_blocks_plan(tmp_path / "b.json")
    res = run("report", tmp_path / "m.onnx", "--synthetic", "4", "--preprocess", "raw", "--blocks", tmp_path / "b.json",
              "-o", tmp_path / "r.html", "-o", tmp_path / "r.md", "-o", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    page, md = (tmp_path / "r.html").read_text(), (tmp_path / "r.md").read_text()
    first_drop = f"{100 * (plan.baseline_accuracy - plan.rounds[0].accuracy):+.2f}"
    for text in (page, md, res.output):
        assert "Block pruning" in text or "residual joins" in text
        assert first_drop in text and plan.removed[0] in text
    assert page.index(f"<td>{plan.removed[0]}</td>") < page.index(f"<td>{plan.removed[1]}</td>")  # removal order
    assert "accuracy versus blocks removed" in page and "p_add" in page  # the curve; the projection join listed
    assert json.loads((tmp_path / "r.json").read_text())["blocks"][0]["removed"] == list(plan.removed)


def test_inverted_residual_without_activation_after_the_join():
    """MobileNetV2-style: expand, depthwise, linear projection, Add (nothing after it but the next conv)."""
    g = GraphBuilder((1, 3, 8, 8), seed=5)
    x = g.conv("input", 3, C, name="stem")
    lo, hi = g.const(np.float32(0)), g.const(np.float32(6))
    h = g.op("Clip", [g.conv(x, C, 4 * C, 1, name="expand"), lo, hi], name="expand_relu6")
    h = g.op("Clip", [g.conv(h, 4 * C, 4 * C, 3, group=4 * C, name="dw"), lo, hi], name="dw_relu6")
    h = g.conv(h, 4 * C, C, 1, name="project")
    y = g.op("Sum", [x, h], name="join")
    model = dynamic(g.build([classifier(g, g.conv(y, C, C, name="after"), C, classes=5)]))
    loaded = load_model(model)
    (block,) = find_blocks(loaded)
    assert block.removable and block.nodes == ("expand", "expand_relu6", "dw", "dw_relu6", "project")
    assert block.params == conv_params(C, 4 * C, 1) + (4 * C * 9 + 4 * C) + conv_params(4 * C, C, 1)
    shallow = remove_blocks(model, [block])
    after = next(n for n in shallow.graph.node if n.name == "after")
    assert after.input[0] == "stem_out" and len(shallow.graph.node) == len(model.graph.node) - 6
    x_in, y_in = data_for(model, n=8)
    assert top1(shallow, x_in, y_in) == top1(bypass(model, block.nodes, "join", "stem_out"), x_in, y_in)
