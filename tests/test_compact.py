"""onnxmbs.compact.writer on tiny hand-built graphs: every surgery pattern, exactness, errors, CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from graphs import GraphBuilder
from onnx import numpy_helper

from onnxmbs.graph.analysis import analyze
from onnxmbs.cli.compact import compact as compact_cmd
from onnxmbs.compact.writer import compact_model, sidecar_path, write_compact
from onnxmbs.errors import MBSError
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.workflow.plan import plan_model
from onnxmbs.planning.planner import compact_width, summarize
from onnxmbs.planning.scaling import param_specs

SHAPE = ("N", 3, 16, 16)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def sample(batch: int = 2, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, *shape[1:])).astype(np.float32)


def per_channel(g: GraphBuilder, c: int, shape=None, scale=0.2, offset=1.0):
    return g.const((offset + scale * g.rng.standard_normal(c)).astype(np.float32).reshape(shape or (1, c, 1, 1)))


def bn(g: GraphBuilder, x, c: int):
    consts = [per_channel(g, c, (c,)), per_channel(g, c, (c,), offset=0.0), per_channel(g, c, (c,), offset=0.0),
              per_channel(g, c, (c,), offset=1.0, scale=0.1)]
    return g.op("BatchNormalization", [x, *consts])


def shuffle(g: GraphBuilder, x, c: int, groups: int, hw: int):
    y = g.op("Reshape", [x, g.const(np.array([-1, groups, c // groups, hw, hw], np.int64), "s")])
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return g.op("Reshape", [y, g.const(np.array([-1, c, hw, hw], np.int64), "s")])


def pattern_graph() -> onnx.ModelProto:
    """BN, depthwise, per-channel Mul/Add/Sub/Div, Clip, squeeze-and-excitation, grouped conv, residual Add,
    MaxPool, Pad, channel shuffle, Concat, PRelu, Split/Concat on space, GlobalAveragePool, Reshape, MatMul."""
    g = GraphBuilder(SHAPE, seed=3)
    x = g.relu(bn(g, g.conv("input", 3, 8), 8))
    x = g.op("Mul", [g.conv(x, 8, 8, group=8, bias=False), per_channel(g, 8)])
    x = g.op("Add", [x, per_channel(g, 8, (8, 1, 1), offset=0.0)])
    x = g.op("Clip", [x, g.const(np.float32(0.0)), g.const(np.float32(6.0))])
    r = g.relu(g.conv(x, 8, 12, k=1))
    gate = g.relu(g.conv(g.op("GlobalAveragePool", [r]), 12, 4, k=1))
    r = g.op("Mul", [r, g.op("Sigmoid", [g.conv(gate, 4, 12, k=1)])])
    x = g.op("Add", [g.relu(g.conv(r, 12, 12, group=3)), r])
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("Pad", [x, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    x = shuffle(g, g.conv(x, 12, 12, k=3, pad=0, group=3), 12, 3, 8)
    x = g.conv(x, 12, 12, group=12)
    x = g.relu(g.op("Concat", [g.conv(x, 12, 6, k=1), g.conv(x, 12, 6, k=1)], axis=1))
    x = g.op("PRelu", [x, per_channel(g, 12, (12, 1, 1), offset=0.1, scale=0.05)])
    x = g.op("Div", [g.op("Sub", [x, per_channel(g, 12, offset=0.0)]), per_channel(g, 12)])
    top, bottom = g.op("Split", [x, g.const(np.array([4, 4], np.int64))], axis=2, outputs=2)
    x = g.op("Concat", [g.relu(top), bottom], axis=2)
    x = g.op("Reshape", [g.op("GlobalAveragePool", [x]), g.const(np.array([-1, 12], np.int64), "s")])
    w = g.const(g.rng.standard_normal((12, 5)).astype(np.float32), "fc")
    return g.build([g.op("Add", [g.op("MatMul", [x, w]), g.const(np.zeros(5, np.float32))])])


def shrink(doc: dict, analysis, *, factor: float = 0.5) -> dict:
    """The plan with every unfrozen group cut to ~factor of its width and the summary to match."""
    doc = json.loads(json.dumps(doc))
    widths = {}
    for g, entry in zip(analysis.channels.groups, doc["groups"]):
        if not g.frozen:
            entry["compact_channels"] = compact_width(g.channels, factor, multiple_of=g.multiple_of)
        widths[g.id] = entry["compact_channels"]
    doc["summary"]["params_compact"] = summarize(param_specs(analysis), widths).params_compact
    return doc


def identity_plan(model) -> tuple[dict, object]:
    analysis = analyze(model)
    return plan_from_statistics(analysis, None, z=1e6).document.to_json(), analysis


@pytest.fixture(scope="module")
def pattern():
    return pattern_graph()


def test_every_beta_one_gives_identical_outputs(pattern):
    doc, analysis = identity_plan(pattern)
    assert all(g["beta"] == 1.0 for g in doc["groups"])
    before = pattern.SerializeToString()
    result = compact_model(pattern, doc)
    assert pattern.SerializeToString() == before  # the input is never modified
    x = sample(3)
    np.testing.assert_array_equal(run(result.model, x), run(pattern, x))
    assert result.params_compact == result.params_predicted == analysis.shapes.params
    assert result.inexact == () and result.copies == ()


def test_all_patterns_cut_to_the_predicted_count(pattern):
    doc, analysis = identity_plan(pattern)
    plan = shrink(doc, analysis)
    result = compact_model(pattern, plan)
    assert result.params_compact == plan["summary"]["params_compact"] < analysis.shapes.params
    assert [g.channels for g in analysis.channels.groups if not g.frozen] != \
        [result.widths[g.id][1] for g in analysis.channels.groups if not g.frozen]
    graph = result.model.graph
    width = {g["id"]: g["compact_channels"] for g in plan["groups"]}
    conv_width = {c.name: width[analysis.channels.conv_group[c.name]] for c in analysis.layers}
    expected = [conv_width[c.name] if c.groups == c.in_channels > 1 else c.groups for c in analysis.layers]
    assert expected != [c.groups for c in analysis.layers]  # some depthwise conv is cut
    groups = [onnx.helper.get_attribute_value(a) for n in graph.node for a in n.attribute if a.name == "group"]
    assert groups == expected  # depthwise convs: the new width; grouped convs: kept
    (shuffled,) = {width[c.segs[0]] for c in analysis.channels.tensor_chan.values() if c.split}
    features = sum(conv_width[c.name] for c in analysis.layers[-2:])  # the two concatenated 1x1 convs
    shapes = [numpy_helper.to_array(t).tolist() for t in graph.initializer if t.name.startswith("s")]
    assert [-1, 3, shuffled // 3, 8, 8] in shapes and [-1, shuffled, 8, 8] in shapes and [-1, features] in shapes
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # dynamic batch kept
    assert run(result.model, sample(4)).shape == (4, 5)
    assert result.inexact == ()  # grouped convs and the shuffle keep whole, aligned groups


def dead_graph(*, dead: dict[int, list[int]], shuffled: bool = False) -> onnx.ModelProto:
    """Conv+ReLU chain whose listed conv outputs are always zero (zero filter, bias -1)."""
    g = GraphBuilder(SHAPE, seed=5)
    x, c_in = "input", 3
    widths = (6, 18, 12) if shuffled else (6, 12, 12)
    for i, c in enumerate(widths):
        x = g.conv(x, c_in, c, group=3 if (shuffled and i == 2) else 1)
        if i in dead:
            w, b = g.inits[-2], g.inits[-1]
            wv, bv = numpy_helper.to_array(w).copy(), numpy_helper.to_array(b).copy()
            wv[dead[i]], bv[dead[i]] = 0.0, -1.0
            w.CopyFrom(numpy_helper.from_array(wv, w.name))
            b.CopyFrom(numpy_helper.from_array(bv, b.name))
        x = g.relu(x)
        if shuffled and i == 1:
            x = shuffle(g, x, c, 3, 16)
        c_in = c
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    w = g.const(g.rng.standard_normal((4, c_in)).astype(np.float32), "fc")
    return g.build([g.op("Gemm", [pooled, w, g.const(np.zeros(4, np.float32))], transB=1)])


def live_plan(model, analysis, live: dict[int, int]) -> dict:
    """A measured plan whose groups of the given conv indices keep the given widths."""
    doc = plan_model(model, synthetic=4, preprocess="raw", z=1e6).document.to_json()
    widths = {g["id"]: g["compact_channels"] for g in doc["groups"]}
    for index, width in live.items():
        gid = analysis.channels.conv_group[analysis.layers[index].name]
        doc["groups"][gid]["compact_channels"] = widths[gid] = width
    doc["summary"]["params_compact"] = summarize(param_specs(analysis), widths).params_compact
    return doc


@pytest.mark.parametrize("select", ["nonzero", "l1"])
def test_dead_channels_are_removed_exactly(select):
    dead = {0: [1, 4], 1: [0, 5, 7]}  # conv 0 has 6 channels, conv 1 has 12
    model = dead_graph(dead=dead)
    analysis = analyze(model)
    plan = live_plan(model, analysis, {0: 4, 1: 9})
    result = compact_model(model, plan, select=select)
    kept = [result.kept[analysis.channels.conv_group[analysis.layers[i].name]] for i in (0, 1)]
    assert kept == [tuple(sorted(set(range(analysis.layers[i].out_channels)) - set(dead[i]))) for i in (0, 1)]
    x = sample(3)
    np.testing.assert_allclose(run(result.model, x), run(model, x), rtol=1e-5, atol=1e-5)
    assert result.params_compact == plan["summary"]["params_compact"]


def test_dead_channels_across_a_channel_shuffle():
    """18 channels shuffled in 3 blocks of 6, offsets 1, 2, 5 dead in each: removed exactly, and the grouped
    conv after the shuffle (18 -> 12, 3 groups of 6 shuffled channels) keeps whole groups: exact too."""
    dead = [i * 6 + k for i in range(3) for k in (1, 2, 5)]
    model = dead_graph(dead={1: dead}, shuffled=True)
    analysis = analyze(model)
    plan = live_plan(model, analysis, {1: 9})
    result = compact_model(model, plan)
    x = sample(2)
    np.testing.assert_allclose(run(result.model, x), run(model, x), rtol=1e-5, atol=1e-5)
    assert result.kept[analysis.channels.conv_group[analysis.layers[1].name]] == tuple(
        sorted(set(range(18)) - set(dead)))
    assert result.inexact == ()


def test_random_weights_are_fresh_seeded_and_counted(pattern):
    doc, analysis = identity_plan(pattern)
    plan = shrink(doc, analysis)
    a = compact_model(pattern, plan, weights="random", seed=7)
    b = compact_model(pattern, plan, weights="random", seed=7)
    inherit = compact_model(pattern, plan)
    assert a.params_compact == inherit.params_compact == plan["summary"]["params_compact"]
    x = sample(2)
    np.testing.assert_array_equal(run(a.model, x), run(b.model, x))
    assert not np.allclose(run(a.model, x), run(inherit.model, x))
    bn_node = next(n for n in a.model.graph.node if n.op_type == "BatchNormalization")
    inits = {t.name: numpy_helper.to_array(t) for t in a.model.graph.initializer}
    assert np.all(inits[bn_node.input[1]] == 1) and np.all(inits[bn_node.input[3]] == 0)


def test_shared_constant_needing_two_cuts_is_copied_and_reported():
    g = GraphBuilder(SHAPE, seed=2)
    scale = per_channel(g, 8)
    a = g.relu(g.op("Mul", [g.conv("input", 3, 8), scale]))
    b = g.relu(g.op("Mul", [g.conv(a, 8, 8), scale]))
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [b])], axis=1)
    model = g.build([g.op("Gemm", [pooled, g.const(np.ones((2, 8), np.float32)), g.const(np.zeros(2, np.float32))],
                           transB=1)])
    doc, analysis = identity_plan(model)
    plan = json.loads(json.dumps(doc))
    widths = {g["id"]: g["compact_channels"] for g in plan["groups"]}
    first, second = (analysis.channels.conv_group[c.name] for c in analysis.layers[:2])
    plan["groups"][first]["compact_channels"] = widths[first] = 6
    plan["groups"][second]["compact_channels"] = widths[second] = 4
    plan["summary"]["params_compact"] = summarize(param_specs(analysis), widths).params_compact
    result = compact_model(model, plan)
    assert result.copies == (scale,)
    assert result.params_compact == plan["summary"]["params_compact"]  # the plan counts both cuts of the shared tensor
    old = dict(plan, summary=dict(plan["summary"], params_compact=plan["summary"]["params_compact"] - 4))
    assert compact_model(model, old).params_compact == old["summary"]["params_compact"] + 4  # older plans still work


def test_plan_for_another_model_is_refused(pattern, tmp_path):
    doc, analysis = identity_plan(pattern)
    other = dict(doc, model=dict(doc["model"], sha256="0" * 64))
    with pytest.raises(MBSError, match="re-run `onnxmbs plan`.*--force"):
        compact_model(pattern, other)
    assert compact_model(pattern, other, force=True).params_compact == analysis.shapes.params
    foreign, _ = identity_plan(dead_graph(dead={}))
    with pytest.raises(MBSError, match="re-run `onnxmbs plan` on this model"):
        compact_model(pattern, foreign, force=True)


def test_impossible_plans_are_clear_errors(pattern, tmp_path):
    doc, analysis = identity_plan(pattern)
    frozen = next(g for g in analysis.channels.groups if g.frozen and g.channels > 3)
    bad = json.loads(json.dumps(doc))
    bad["groups"][frozen.id]["compact_channels"] = 2
    with pytest.raises(MBSError, match=f"group {frozen.id} is frozen"):
        compact_model(pattern, bad)
    grouped = next(g for g in analysis.channels.groups if g.multiple_of == 3)
    bad = json.loads(json.dumps(doc))
    bad["groups"][grouped.id]["compact_channels"] = grouped.channels - 1
    with pytest.raises(MBSError, match="--round-to 3"):
        compact_model(pattern, bad)
    with pytest.raises(MBSError, match="inherit or random"):
        compact_model(pattern, doc, weights="zeros")
    bad = json.loads(json.dumps(doc))
    bad["summary"]["params_compact"] += 1
    out = tmp_path / "never.onnx"
    with pytest.raises(MBSError, match="nothing was written"):
        write_compact(pattern, bad, out)
    assert not out.exists()


def test_write_compact_file_sidecar_and_latency(pattern, tmp_path):
    doc, analysis = identity_plan(pattern)
    plan = shrink(doc, analysis)
    out = tmp_path / "c.onnx"
    result = write_compact(pattern, plan, out, latency_repeats=2)
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    record = json.loads(sidecar_path(out).read_text())
    assert record["params_compact"] == record["params_predicted"] == result.params_compact
    assert record["bytes_compact"] == out.stat().st_size < record["bytes_original"]
    assert record["latency"]["original_ms"] > 0 and record["latency"]["compact_ms"] > 0
    assert {g["id"] for g in record["groups"]} == {g for g, (c, k) in result.widths.items() if k < c}


def test_cli_compact(pattern, tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(pattern, str(model))
    doc, analysis = identity_plan(str(model))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(shrink(doc, analysis)))
    out = tmp_path / "c.onnx"
    res = CliRunner().invoke(compact_cmd, [str(model), "--plan", str(plan), "-o", str(out), "--repeats", "1"])
    assert res.exit_code == 0, res.output
    assert "parameters" in res.output and "latency" in res.output and out.exists()
    assert sidecar_path(out).exists()
    res = CliRunner().invoke(compact_cmd, [str(model), "--plan", str(tmp_path / "missing.json"), "-o", str(out)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "error:" in res.output
    onnx.save(dead_graph(dead={}), str(model))
    res = CliRunner().invoke(compact_cmd, [str(model), "--plan", str(plan), "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 1 and "re-run `onnxmbs plan`" in res.output and not (tmp_path / "x.onnx").exists()


def test_embedded_model_keeps_its_most_active_channels():
    """The digits ResNet-20 on its real calibration data: every cut group keeps its highest measured rates."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "models"
    model = str(root / "resnet20_digits.onnx")
    data = np.load(root / "digits_calib.npz")["x"][:32]
    plan = plan_model(model, data=data, preprocess=None, progress=False).document.to_json()
    result = compact_model(model, plan)
    assert result.params_compact == plan["summary"]["params_compact"] < plan["summary"]["params"]
    rates = {}
    for layer in plan["layers"]:
        if layer.get("channel_p_nonzero") is not None and layer["group"] in result.kept:
            rates.setdefault(layer["group"], []).append(layer["channel_p_nonzero"])
    cut = [g for g, (c, k) in result.widths.items() if k < c]
    assert cut and all(result.selection[g] == "nonzero" for g in cut)
    for g in cut:
        mean = np.mean(rates[g], axis=0)
        dropped = np.setdiff1d(np.arange(len(mean)), result.kept[g])
        assert mean[list(result.kept[g])].min() >= mean[dropped].max()
