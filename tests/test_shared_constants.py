"""One constant feeding two differently-cut consumers: the plan predicts the copies the compact file holds."""
from __future__ import annotations

import numpy as np
import pytest

from graphs import GraphBuilder, classifier
from onnxmbs import analyze
from onnxmbs.compact.writer import compact_model
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.stats.counting import collect_statistics


def shared_scale_net():
    """Two convs in different macroblocks, each followed by Mul with the SAME per-channel constant
    (what tf2onnx leaves of BatchNorms with equal statistics, e.g. in DenseNet121)."""
    g = GraphBuilder(("N", 3, 32, 32))
    scale = g.const(np.linspace(0.5, 1.5, 8, dtype=np.float32).reshape(8, 1, 1), "scale")
    a = g.relu(g.op("Mul", [g.conv(g.input.name, 3, 8, name="c1"), scale]), name="r1")
    b = g.relu(g.op("Mul", [g.conv(a, 8, 8, stride=2, name="c2"), scale]), name="r2")
    c = g.relu(g.conv(b, 8, 8, stride=2, name="c3"), name="r3")
    return g.build([classifier(g, c, 8)])


@pytest.mark.parametrize("z", [1, 4])
def test_plan_predicts_the_compact_files_parameters(z):
    model = shared_scale_net()
    a = analyze(model)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    stats = collect_statistics(a, [x], provider="cpu", progress=False)
    doc = plan_from_statistics(a, stats, z=z).document
    result = compact_model(model, doc)
    assert result.params_compact == doc.summary.params_compact
    # by hand: the shared 8-vector is stored once per distinct cut its two consumers need
    width = {l.name: l.compact_out_channels for l in doc.layers}
    cuts = {width["c1"], width["c2"]}
    assert len(result.copies) == (len(cuts) - 1)
    if z == 1:
        assert width["c1"] == 8 and width["c2"] < 8 and result.copies  # the case that used to disagree


@pytest.mark.parametrize("uniform", [True, False])
def test_equal_cuts_of_a_uniform_constant_are_one_tensor(uniform):
    """tf2onnx shares BatchNorm constants that are equal (untrained: γ/σ all alike); cut to the same width
    in two groups they stay equal, so the file holds one copy — and the plan must say so."""
    from onnxmbs.planning.planner import summarize
    from onnxmbs.planning.scaling import param_specs

    g = GraphBuilder(("N", 3, 16, 16))
    value = np.full(8, 0.9, np.float32) if uniform else np.linspace(0.5, 1.5, 8, dtype=np.float32)
    scale = g.const(value.reshape(8, 1, 1), "scale")
    a = g.relu(g.op("Mul", [g.conv(g.input.name, 3, 8, name="c1"), scale]), name="r1")
    b = g.relu(g.op("Mul", [g.conv(a, 8, 8, stride=2, name="c2"), scale]), name="r2")
    model = g.build([classifier(g, b, 8)])
    analysis = analyze(model)
    doc = plan_from_statistics(analysis, None).document.to_json()
    groups = {analysis.channels.conv_group[n] for n in ("c1", "c2")}
    for entry in doc["groups"]:
        if entry["id"] in groups:
            entry["compact_channels"] = 6
    widths = {e["id"]: e["compact_channels"] for e in doc["groups"]}
    doc["summary"]["params_compact"] = summarize(param_specs(analysis), widths).params_compact
    result = compact_model(model, doc, select="l1")
    assert result.params_compact == doc["summary"]["params_compact"]
    assert len(result.copies) == (0 if uniform else 1)
