"""`onnxmbs check`: exit 0 pass, 1 fail, 2 usage; JUnit XML; GitHub step summary."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxmbs.cli import main
from onnxmbs.cli.options import Count
from onnxmbs.reports.gate import CheckResult, GateLimits, junit_xml, summary_markdown

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
NPZ = ROOT / "models" / "digits_calib.npz"
PARAMS, MACS = 271_690, 40_813_184  # the embedded model, as `onnxmbs analyze` counts them


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


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


def test_static_limits_pass_without_data():
    res = run("check", MODEL, "--max-params", PARAMS, "--max-flops", "41M")
    assert res.exit_code == 0, res.output
    assert res.output.rstrip().endswith("PASS") and res.output.count("PASS") == 4  # 3 checks + verdict


def test_static_limit_failure_says_by_how_much():
    res = run("check", MODEL, "--max-params", "250k", "--max-flops", MACS)
    assert res.exit_code == 1
    assert f"params {PARAMS:,} exceed --max-params 250,000 by {PARAMS - 250_000:,}" in res.output
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


def test_redundancy_needs_statistics_and_names_the_macroblock(stats_file):
    res = run("check", MODEL, "--stats", stats_file, "--max-redundancy", "0.3")
    assert res.exit_code == 1
    assert "m2 (8x8) r = 0.36" in res.output and "64 -> 47" in res.output
    assert run("check", MODEL, "--stats", stats_file, "--max-redundancy", "0.4").exit_code == 0
    assert run("check", MODEL, "--stats", stats_file, "--max-redundancy", "0.3", "--k", "1.5").exit_code == 0


def test_baseline_within_and_beyond_tolerance(stats_file, baseline, tmp_path):
    res = run("check", MODEL, "--data", NPZ, "--max-images", "128", "--baseline", baseline, "--tolerance", "0.02")
    assert res.exit_code == 0, res.output  # other images, same β within 0.02
    doc = json.loads(baseline.read_text())
    doc["macroblocks"][2]["beta"] -= 0.05
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(doc))
    res = run("check", MODEL, "--stats", stats_file, "--baseline", shifted)
    assert res.exit_code == 1 and "m2: β 0.7327 vs 0.6827" in res.output
    assert run("check", MODEL, "--stats", stats_file, "--baseline", shifted, "--tolerance", "0.06").exit_code == 0
    doc["macroblocks"].pop()
    shifted.write_text(json.dumps(doc))
    res = run("check", MODEL, "--stats", stats_file, "--baseline", shifted)
    assert res.exit_code == 1 and "macroblock count changed" in res.output
    res = run("check", MODEL, "--stats", stats_file, "--baseline", stats_file)
    assert res.exit_code == 1 and "not an onnxmbs plan" in res.output


def test_junit_and_step_summary(tmp_path, stats_file):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage")
    junit, summary = tmp_path / "out" / "junit.xml", tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    res = run("check", MODEL, broken, "--stats", stats_file, "--max-params", "1M", "--max-redundancy", "0.3",
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
