"""Activation taps beyond the paper: SiLU, GELU, HardSwish, LeakyReLU, PReLU ... count outputs > 0."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from graphs import GraphBuilder, classifier
from onnxmbs import MBSError, analyze
from onnxmbs.stats import counting
from onnxmbs.runtime.session import make_session
from onnxmbs.stats.counting import collect_statistics


def _silu(g, x):
    return g.op("Mul", [x, g.op("Sigmoid", [x])], name="act")


def _erf_gelu(g, x):  # what torch.onnx emits for nn.GELU()
    erf = g.op("Erf", [g.op("Div", [x, g.const(np.array(1.4142135, np.float32))])])
    gate = g.op("Add", [erf, g.const(np.array(1.0, np.float32))])
    return g.op("Mul", [g.op("Mul", [x, g.const(np.array(0.5, np.float32))]), gate], name="act")


def _relu6_hardswish(g, x):  # tf2onnx's x * relu6(x + 3) / 6
    six = g.op("Clip", [g.op("Add", [x, g.const(np.array(3.0, np.float32))]), g.const(np.array(0.0, np.float32)),
                        g.const(np.array(6.0, np.float32))])
    return g.op("Mul", [x, g.op("Mul", [six, g.const(np.array(1 / 6, np.float32))])], name="act")


ACTIVATIONS = {
    "silu": (_silu, 17),
    "hardsigmoid_x": (lambda g, x: g.op("Mul", [g.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5), x], name="act"), 17),
    "hardswish": (lambda g, x: g.op("HardSwish", [x], name="act"), 17),
    "relu6_hardswish": (_relu6_hardswish, 17),
    "gelu": (lambda g, x: g.op("Gelu", [x], name="act"), 20),
    "erf_gelu": (_erf_gelu, 17),
    "leaky": (lambda g, x: g.op("LeakyRelu", [x], name="act", alpha=0.1), 17),
    "prelu": (lambda g, x: g.op("PRelu", [x, g.const(np.full((8, 1, 1), 0.25, np.float32))], name="act"), 17),
    "elu": (lambda g, x: g.op("Elu", [x], name="act"), 17),
}


def one_activation_net(kind, *, batch="N"):
    make, opset = ACTIVATIONS[kind]
    g = GraphBuilder((batch, 3, 10, 10))
    bn = g.op("BatchNormalization", [g.conv(g.input.name, 3, 8, name="c1"), g.const(np.ones(8, np.float32)),
                                     g.const(np.full(8, 0.1, np.float32)), g.const(np.zeros(8, np.float32)),
                                     g.const(np.ones(8, np.float32))])
    y = make(g, bn)
    out = g.conv(y, 8, 8, stride=2, name="c2")  # linear: no activation
    return g.build([classifier(g, out, 8)], opset=opset)


def counts_of(model, tensor, x):
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    probe.graph.output.extend([onnx.ValueInfoProto(name=tensor)])
    (value,) = make_session(probe, "CPUExecutionProvider").run(None, {"input": x})
    return (value > 0).sum(axis=(0, 2, 3))


@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
def test_non_relu_activations_count_outputs_above_zero(kind):
    model = one_activation_net(kind)
    a = analyze(model)
    tap = a.taps["c1"]
    assert tap is not None and tap.node == "act" and tap.statistic == "positive"
    assert a.taps["c2"] is None
    x = np.random.default_rng(3).standard_normal((5, 3, 10, 10)).astype(np.float32)
    stats = collect_statistics(a, [x[:2], x[2:]], provider="cpu", progress=False)
    expected = counts_of(model, tap.tensor, x)
    np.testing.assert_array_equal(stats.taps[tap.tensor].nonzero, expected)
    assert 0 < expected.sum() < 5 * 8 * 100  # a real fraction: neither all nor nothing


@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
def test_paper_statistic_leaves_them_unmeasured(kind):
    assert analyze(one_activation_net(kind), statistic="paper").taps["c1"] is None


def test_relu_family_keeps_the_papers_non_zero_count():
    g = GraphBuilder(("N", 3, 8, 8))
    x = g.relu(g.conv(g.input.name, 3, 4, name="c1"), name="r1")
    six = g.op("Clip", [g.conv(x, 4, 4, name="c2"), g.const(np.array(0.0, np.float32)),
                        g.const(np.array(6.0, np.float32))], name="r2")
    model = g.build([classifier(g, six, 4)])
    for statistic in ("extended", "paper"):
        taps = analyze(model, statistic=statistic).taps
        assert [(t.node, t.statistic) for t in taps.values()] == [("r1", "nonzero"), ("r2", "nonzero")]


def test_squeeze_excitation_gate_is_not_an_activation():
    g = GraphBuilder(("N", 3, 8, 8))
    x = g.conv(g.input.name, 3, 4, name="c1")
    squeeze = g.conv(g.op("GlobalAveragePool", [x]), 4, 4, k=1, name="se")
    scaled = g.op("Mul", [x, g.op("Sigmoid", [squeeze])], name="scale")  # SE: gate from another path
    model = g.build([classifier(g, g.relu(scaled, name="r"), 4)])
    assert analyze(model).taps["c1"] is None  # the SE scale is neither an activation nor channel-preserving


def silu_only_model(path):
    onnx.save(one_activation_net("silu"), str(path))
    return str(path)


def test_a_model_without_relu_plans(tmp_path):
    from onnxmbs.cli import main

    model = silu_only_model(tmp_path / "silu.onnx")
    for statistic in ("extended", "paper"):  # paper: no tap at all, nothing to instrument
        out = tmp_path / f"{statistic}.json"
        result = CliRunner().invoke(main, ["plan", model, "--synthetic", "3", "--statistic", statistic,
                                           "-o", str(out)])
        assert result.exit_code == 0, result.output
        import json
        doc = json.loads(out.read_text())
        stats = {l["name"]: l["statistic"] for l in doc["layers"]}
        assert stats == {"c1": "positive" if statistic == "extended" else None, "c2": None}
        assert doc["settings"]["statistic"] == statistic and doc["settings"]["images"] == 3


def test_an_invalid_counting_copy_blames_onnxmbs(monkeypatch):
    a = analyze(one_activation_net("silu"))
    real = counting.instrument

    def broken(analysis, **kw):
        inst = real(analysis, **kw)
        inst.model.graph.node[-1].input.append("no_such_tensor")
        return inst

    monkeypatch.setattr(counting, "instrument", broken)
    with pytest.raises(MBSError, match="onnxmbs bug") as err:
        collect_statistics(a, [np.zeros((1, 3, 10, 10), np.float32)], provider="cpu", progress=False)
    assert "check it runs with onnxruntime" not in str(err.value)


def test_analyze_marks_the_layers_counted_beyond_the_paper(tmp_path):
    from onnxmbs.cli import main

    model = silu_only_model(tmp_path / "silu.onnx")
    rows = {line.split()[0]: line for line in CliRunner().invoke(main, ["analyze", model]).output.splitlines()
            if line.startswith("c")}
    assert rows["c1"].endswith("act (>0)") and rows["c2"].endswith("(none)")
    paper = CliRunner().invoke(main, ["analyze", model, "--statistic", "paper"]).output
    assert "(>0)" not in paper


def test_stats_profiled_with_the_paper_statistic_say_so(tmp_path):
    from onnxmbs.cli import main

    model = silu_only_model(tmp_path / "silu.onnx")
    stats = tmp_path / "s.json"
    assert CliRunner().invoke(main, ["profile", model, "--synthetic", "2", "--statistic", "paper",
                                     "-o", str(stats)]).exit_code == 0
    assert CliRunner().invoke(main, ["plan", model, "--stats", str(stats), "--statistic", "paper"]).exit_code == 0
    result = CliRunner().invoke(main, ["plan", model, "--stats", str(stats)])
    assert result.exit_code == 1 and "profiled with --statistic paper" in result.output
