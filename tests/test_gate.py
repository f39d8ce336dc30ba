"""`onnxmbs check`: exit 0 pass, 1 fail, 2 usage; JUnit XML; GitHub step summary."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxmbs.cli import main
from onnxmbs.cli.values import Count
from onnxmbs.planning.document import PlanDocument, read_plan
from onnxmbs.reports.gate import CheckResult, GateLimits, junit_xml, summary_markdown

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
NPZ = ROOT / "models" / "digits_calib.npz"


def _graph_counts(path: Path) -> tuple[int, int]:
    """Params (Conv/Gemm weights and biases) and MACs per image, counted straight from the ONNX graph:
    a Conv or Gemm (transB) does ``prod(weight.shape[1:])`` multiply-adds per output element."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    dims.update({v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
                 for v in [*model.graph.value_info, *model.graph.output]})
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    params = sum(math.prod(dims[t]) for n in layers for t in n.input[1:])
    macs = sum(math.prod(dims[n.input[1]][1:]) * math.prod(dims[n.output[0]][1:]) for n in layers)
    return params, macs


PARAMS, MACS = _graph_counts(MODEL)


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


def redundancy(plan: PlanDocument, k: float) -> list[float]:
    """Algorithm 1 redone from the plan's layer facts: r_i = 1 - E_base/E_total over m_0..m_i, z = k*L."""
    layers = plan.layers
    boundary = min(l.rf for l in layers if l.rf is not None and l.rf > k * plan.model.L)
    result = []
    for i in range(len(plan.macroblocks)):
        upto = [l for l in layers if l.macroblock is not None and l.macroblock <= i]
        total = sum(l.p_nonzero * l.flops for l in upto)
        result.append(1 - sum(l.p_nonzero * l.flops for l in upto if l.rf <= boundary) / total)
    return result


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gate") / "stats.json"
    assert run("profile", MODEL, "--data", NPZ, "--max-images", "64", "-o", out).exit_code == 0
    return out


@pytest.fixture(scope="module")
def baseline(stats_file) -> Path:
    out = stats_file.parent / "baseline.json"
    assert run("plan", MODEL, "--stats", stats_file, "-o", out).exit_code == 0
    return out


@pytest.fixture(scope="module")
def plan(baseline) -> PlanDocument:
    return read_plan(baseline)


@pytest.fixture(scope="module")
def strict(plan) -> float:
    """A --max-redundancy just below the largest r at k = 1, so that the check fails."""
    return round(max(redundancy(plan, 1.0)) - 0.01, 4)


def test_static_limits_pass_without_data():
    res = run("check", MODEL, "--max-params", PARAMS, "--max-flops", MACS)
    assert res.exit_code == 0, res.output
    assert res.output.rstrip().endswith("PASS") and res.output.count("PASS") == 4  # 3 checks + verdict


def test_static_limit_failure_says_by_how_much():
    limit = PARAMS - 1000
    res = run("check", MODEL, "--max-params", limit, "--max-flops", MACS)
    assert res.exit_code == 1
    assert f"params {PARAMS:,} exceed --max-params {limit:,} by 1,000" in res.output
    assert "FAIL (1 of 3 checks)" in res.output


@pytest.mark.parametrize("args", [
    ["--max-redundancy", "0.3"],                    # needs statistics
    ["--baseline", "x.json"],                       # needs statistics
    ["--max-params", "lots"],                       # not a count
    ["--max-redundancy", "1.5", "--synthetic", "2"],  # out of range
    ["--tolerance", "0.1", "--max-params", "1M"],   # tolerance without a baseline
])
def test_usage_errors_exit_2(args):
    res = run("check", MODEL, *args)
    assert res.exit_code == 2, res.output
    assert run("check").exit_code == 2


def test_redundancy_needs_statistics_and_names_the_macroblock(stats_file, plan, strict):
    r = redundancy(plan, 1.0)
    res = run("check", MODEL, "--stats", stats_file, "--max-redundancy", strict)
    assert res.exit_code == 1
    for i, mb in enumerate(plan.macroblocks):  # every macroblock above the limit is named, no other
        assert (f"m{i} ({mb.out_hw[0]}x{mb.out_hw[1]}) r = {r[i]:.4f}" in res.output) == (r[i] > strict)
    worst = r.index(max(r))
    (width,) = {l.out_channels for l in plan.layers if l.macroblock == worst}
    assert f"{width} -> {math.ceil(width / (1 + r[worst]))}" in res.output  # ceil(beta * C), beta = 1/(1+r)
    assert run("check", MODEL, "--stats", stats_file, "--max-redundancy", max(r) + 0.01).exit_code == 0
    assert max(redundancy(plan, 1.5)) < strict  # a larger z leaves fewer enhancement layers
    assert run("check", MODEL, "--stats", stats_file, "--max-redundancy", strict, "--k", "1.5").exit_code == 0


def test_baseline_within_and_beyond_tolerance(stats_file, baseline, plan, tmp_path):
    res = run("check", MODEL, "--data", NPZ, "--max-images", "128", "--baseline", baseline, "--tolerance", "0.02")
    assert res.exit_code == 0, res.output  # other images, same β within 0.02
    doc = plan.to_json()
    last = len(doc["macroblocks"]) - 1
    doc["macroblocks"][last]["beta"] -= 0.05
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(doc))
    res = run("check", MODEL, "--stats", stats_file, "--baseline", shifted)
    beta = 1 / (1 + redundancy(plan, 1.0)[last])  # re-planned from the same statistics
    assert res.exit_code == 1 and f"m{last}: β {beta:.4f} vs {beta - 0.05:.4f}" in res.output
    assert run("check", MODEL, "--stats", stats_file, "--baseline", shifted, "--tolerance", "0.06").exit_code == 0
    doc["macroblocks"].pop()
    shifted.write_text(json.dumps(doc))
    res = run("check", MODEL, "--stats", stats_file, "--baseline", shifted)
    assert res.exit_code == 1 and "macroblock count changed" in res.output
    res = run("check", MODEL, "--stats", stats_file, "--baseline", stats_file)
    assert res.exit_code == 1 and "not an onnxmbs plan" in res.output


def test_junit_and_step_summary(tmp_path, stats_file, strict):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage")
    junit, summary = tmp_path / "out" / "junit.xml", tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    res = run("check", MODEL, broken, "--stats", stats_file, "--max-params", PARAMS, "--max-redundancy", strict,
              "--junit", junit, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.exit_code == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "6"
    assert root.get("failures") == "1" and root.get("errors") == "3"
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {(str(m), c) for m in (MODEL, broken) for c in ("analyze", "max-params", "max-redundancy")}
    assert cases[(str(MODEL), "max-redundancy")].find("failure") is not None
    assert cases[(str(MODEL), "max-params")].find("failure") is None
    assert "cannot read" in cases[(str(broken), "analyze")].find("error").get("message")
    text = summary.read_text()
    assert text.startswith("earlier step\n### onnxmbs check: ❌ FAIL — 2 model(s), 6 check(s), 4 failed")
    assert "| model | check | result | details |" in text and text.count("\n| `") == 6


def test_passing_gate_writes_a_passing_report(tmp_path):
    junit, summary = tmp_path / "j.xml", tmp_path / "s.md"
    res = run("check", MODEL, "--junit", junit, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.exit_code == 0
    assert ET.parse(junit).getroot().get("failures") == "0" and "✅ PASS" in summary.read_text()


def test_units():
    assert [Count().convert(v, None, None) for v in ("272474", "272_474", "250k", "1.5M", "4G", "2.5e5")] == \
        [272474, 272474, 250_000, 1_500_000, 4_000_000_000, 250_000]
    assert GateLimits(max_params=1).checks() == ["analyze", "max-params"]
    assert GateLimits(baselines=("b.json",)).needs_statistics and not GateLimits(max_flops=3).needs_statistics
    results = [CheckResult("a&b.onnx", "max-params", False, 'x < "y" | z', 2, 1)]
    assert ET.fromstring(junit_xml(results)).find(".//failure").get("message") == 'x < "y" | z'
    assert "x < \"y\" / z" in summary_markdown(results)
