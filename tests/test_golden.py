"""Golden outputs of every command on the embedded model.

Written before the package was re-laid out (issue: typed plan contract and layout), so
that a refactor provably changes no command's output and no value of the plan JSON.
Volatile parts (temporary paths, timings, dates, latency) are normalised away.
Regenerate deliberately with ``ONNXMBS_REGOLD=1 pytest tests/test_golden.py``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxmbs.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = "models/resnet20_digits.onnx"
GOLDEN = Path(__file__).parent / "golden"
VOLATILE = {"seconds", "created", "latency_ms", "original_ms", "compact_ms", "speedup", "stats_file", "stats", "onnxmbs", "file_bytes", "path_compact"}


def _scrub(value, tmp: str):
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE else _scrub(v, tmp)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, tmp) for v in value]
    if isinstance(value, str):
        return value.replace(tmp, "<TMP>")
    return value


def _text(output: str, tmp: str) -> str:
    out = output.replace(tmp, "<TMP>")
    out = re.sub(r"counted in [0-9.]+s", "counted in <t>s", out)
    out = re.sub(r"(?m)^latency .*$", "latency <volatile>", out)
    out = re.sub(r"(?m)^file size .*$", "file size <volatile>", out)
    out = re.sub(r"(?m)^hint .*\n", "", out)  # shown only when the measured latency got worse
    return out


def _compare(name: str, got: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ONNXMBS_REGOLD"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(got)
    assert got == path.read_text(), f"output of {name} changed"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        res = CliRunner().invoke(main, ["profile", MODEL, "--data", "models/digits_calib", "--preprocess", "raw",
                                        "-o", str(tmp / "stats.json")], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        yield tmp
    finally:
        os.chdir(cwd)


COMMANDS = {
    "analyze.txt": ["analyze", MODEL],
    "analyze_json.txt": ["analyze", MODEL, "--json"],
    "plan.txt": ["plan", MODEL, "--stats", "{tmp}/stats.json", "-o", "{tmp}/plan.json"],
    "plan_json.txt": ["plan", MODEL, "--stats", "{tmp}/stats.json", "--json"],
    "plan_data.txt": ["plan", MODEL, "--data", "models/digits_calib", "--preprocess", "raw", "--json"],
    "sweep.txt": ["sweep", MODEL, "--stats", "{tmp}/stats.json", "--k", "0.6:1.4:0.2"],
    "sweep_json.txt": ["sweep", MODEL, "--stats", "{tmp}/stats.json", "--k", "0.6:1.4:0.2", "--json"],
    "sweep_target.txt": ["sweep", MODEL, "--stats", "{tmp}/stats.json", "--target-param-reduction", "0.3",
                         "-o", "{tmp}/target.json"],
    "report.txt": ["report", MODEL, "--stats", "{tmp}/stats.json", "-o", "{tmp}/r.md", "-o", "{tmp}/r.json",
                   "-o", "{tmp}/r.csv"],
    "check.txt": ["check", MODEL, "--stats", "{tmp}/stats.json", "--max-params", "300k", "--max-redundancy", "0.5"],
    "compact.txt": ["compact", MODEL, "--plan", "{tmp}/plan.json", "-o", "{tmp}/c.onnx"],
    "zoo_list.txt": ["zoo", "list"],
}
FILES = {"plan.json": "plan.json", "target.json": "target.json", "r.json": "r.json", "r.md": "r.md",
         "r.csv": "r.csv", "c.onnx.json": "c.onnx.json"}


def _normalise_json(text: str, tmp: str) -> str:
    return json.dumps(_scrub(json.loads(text), tmp), indent=1, sort_keys=False) + "\n"


def test_command_outputs(work):
    tmp = str(work)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for name, args in COMMANDS.items():
            res = CliRunner().invoke(main, [a.format(tmp=tmp) for a in args], catch_exceptions=False)
            assert res.exit_code == 0, (name, res.output)
            out = res.output
            if name.endswith("_json.txt") or name == "plan_data.txt":
                out = _normalise_json(res.stdout, tmp) + res.stderr  # JSON on stdout, decisions on stderr
            _compare(name, _text(out, tmp))
    finally:
        os.chdir(cwd)
    for golden, written in FILES.items():
        text = (work / written).read_text()
        if golden.endswith(".json"):
            text = _normalise_json(text, tmp)
        elif golden.endswith(".csv"):
            text = re.sub(r",[0-9.]+\n", ",<t>\n", text)
        else:
            text = re.sub(r"\d{4}-\d\d-\d\dT[0-9:+]+", "<date>", text)
        _compare("file_" + golden, _text(text, tmp))
