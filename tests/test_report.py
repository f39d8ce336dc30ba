"""Batch reports: every format parses, a broken model becomes a failure row, the HTML renders in a real browser."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from graphs import GraphBuilder, classifier
from PIL import Image

from onnxmbs.planning.document import MacroblockRecord, read_plan
from onnxmbs.reports import plots
from onnxmbs.cli import main
from onnxmbs.reports.report import CSV_COLUMNS, SCHEMA

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
NPZ = ROOT / "models" / "digits_calib.npz"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _tiny_cnn(path: Path) -> Path:
    """A second model: a plain 8-conv CNN (3x3, pad 1) with a dynamic batch, built as a graph here.

    Output sizes 32, 16, 16, 8, 8, 8, 8, 8 give three macroblocks; the last conv's RF is 45 > L = 32."""
    g = GraphBuilder(("batch", 3, 32, 32))
    x, c_in = "input", 3
    for c_out, stride in ((8, 1), (16, 2), (16, 1), (32, 2), *[(32, 1)] * 4):
        x, c_in = g.relu(g.conv(x, c_in, c_out, stride=stride)), c_out
    path.write_bytes(g.build([classifier(g, x, c_in)]).SerializeToString())
    return path


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One report over: the embedded model (via --stats), a CNN built here (measured on --data), a broken file."""
    tmp = tmp_path_factory.mktemp("report")
    stats = tmp / "stats.json"
    assert run("profile", MODEL, "--data", NPZ, "--max-images", "64", "-o", stats).exit_code == 0
    tiny = _tiny_cnn(tmp / "tiny_cnn.onnx")
    broken = tmp / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    outs = {ext: tmp / f"report.{ext}" for ext in ("html", "md", "json", "csv")}
    res = run("report", MODEL, tiny, broken, "--stats", stats, "--data", NPZ, "--max-images", "32",
              "--sweep", "0.5:1.5:0.25", *[a for p in outs.values() for a in ("-o", p)])
    return res, outs, (MODEL, tiny, broken)


def test_a_failing_model_becomes_a_failure_row_and_exit_1(batch):
    res, outs, models = batch
    assert res.exit_code == 1
    assert all(p.is_file() for p in outs.values())
    assert f"FAILED {models[2]}: cannot read" in res.output and "1 of 3 model(s) failed" in res.output
    assert "resnet20_digits.onnx" in res.output and "tiny_cnn.onnx" in res.output


def test_json_report_schema(batch):
    doc = json.loads(batch[1]["json"].read_text())
    assert doc["schema"] == SCHEMA and doc["totals"] == {"models": 3, "failed": 1}
    ok, tiny, broken = doc["models"]
    assert [m["status"] for m in doc["models"]] == ["ok", "ok", "failed"]
    assert broken["error"].startswith("cannot read") and broken["plan"] is None
    assert ok["plan"]["settings"]["stats_file"].endswith("stats.json") and ok["plan"]["settings"]["images"] == 64
    assert tiny["plan"]["settings"]["images"] == 32 and "digits_calib.npz" in tiny["plan"]["settings"]["data"]
    assert [len(mb["layers"]) for mb in tiny["plan"]["macroblocks"]] == [1, 2, 5]  # convs at 32, 16, 8 px
    assert max(layer["rf"] for layer in tiny["plan"]["layers"]) == 1 + 2 * (1 + 1 + 2 + 2 + 4 * 4)  # 45
    for m in (ok, tiny):
        assert m["plan"]["schema"] == "onnxmbs.plan/1" and len(m["plan"]["macroblocks"]) == 3
        assert [p["k"] for p in m["sweep"]] == [0.5, 0.75, 1.0, 1.25, 1.5]
        assert m["curve"][0]["k"] == 0.5 and m["curve"][-1]["k"] == 1.5
        assert set(m["summary"]) == set(CSV_COLUMNS)
    assert ok["summary"]["configuration"] == " | ".join(
        "/".join(map(str, c)) for c in ok["sweep"][2]["configuration"])  # k = 1 is the plan


def test_csv_report_columns(batch):
    rows = list(csv.DictReader(io.StringIO(batch[1]["csv"].read_text())))
    assert len(rows) == 3 and tuple(rows[0]) == CSV_COLUMNS
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[2]["error"].startswith("cannot read") and rows[2]["params"] == ""
    assert int(rows[0]["params"]) > int(rows[0]["params_compact"]) > 0
    assert 0 < float(rows[0]["param_reduction"]) < 1 and len(rows[0]["beta"].split(";")) == 3


def test_markdown_report_tables(batch):
    text = batch[1]["md"].read_text()
    lines = text.splitlines()
    assert lines[0] == "# onnxmbs report"
    head = lines.index("| model | status | images | β per macroblock | configuration | params | MACs |")
    assert lines[head + 1] == "|---|---|---|---|---|---|---|"
    rows = lines[head + 2:head + 5]
    assert all(r.startswith("| ") and r.count(" | ") >= 6 for r in rows) and "FAILED" in rows[2]
    assert text.count("| mb | resolution |") == 2 and text.count("| k | RF boundary |") == 2
    assert "**FAILED**: cannot read" in text


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained(batch):
    html = batch[1]["html"].read_text()
    parser = _Tags()
    parser.feed(html)
    names = [t for t, _ in parser.tags]
    assert names.count("svg") == 6 and "script" not in names and "link" not in names and "img" not in names
    assert all(not str(a.get("href", "#")).startswith(("http", "//")) for _, a in parser.tags)
    assert html.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0
    assert sum(1 for t, a in parser.tags if t == "tr" and a.get("class") == "failed") == 1


def test_plots_unit():
    assert plots.nice_ticks(0, 1, 5) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    fixture = read_plan(Path(__file__).parent / "fixtures" / "plan_v1_resnet20.json").layers[0]
    layers = [replace(fixture, name=f"c{i}", macroblock=i // 2, out_hw=(8, 8), rf=3 + 2 * i, p_nonzero=0.5,
                      measured=i != 3, base=i < 3) for i in range(6)]
    svg = plots.depth_profile(layers, rf_boundary=7, z=6)
    assert svg.startswith("<svg") and svg.endswith("</svg>") and 'class="rf-boundary"' in svg
    assert svg.count("<circle") >= 6 and "not measured" in svg and "RF boundary 7px (z=6)" in svg
    bars = plots.beta_bars([MacroblockRecord(index=0, level=0, out_hw=(8, 8), layers=(), e_total=1.0, e_base=1.0,
                                             redundancy=0.0, beta=1.0),
                            MacroblockRecord(index=1, level=1, out_hw=(4, 4), layers=(), e_total=1.0, e_base=0.5,
                                             redundancy=1 / 3, beta=0.75)])
    assert bars.count('class="bar"') == 2 and "0.750" in bars
    curve = [SimpleNamespace(k=0.5, param_reduction=0.4, flop_reduction=0.2),
             SimpleNamespace(k=1.0, param_reduction=0.1, flop_reduction=0.05)]
    svg = plots.tradeoff_curve(curve, marks=curve, chosen_k=1.0)
    assert svg.count('class="curve"') == 2 and "plan k=1" in svg
    assert "<script" not in svg and "&lt;" not in plots.beta_bars([])


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _colour_pixels(image: Image.Image, hex_colour: str, tol: int = 12) -> int:
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return int((np.abs(rgb - target).max(axis=-1) <= tol).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser here (apt-get install chromium)")
def test_html_renders_in_a_headless_browser(batch, tmp_path):
    html = batch[1]["html"]
    shot = tmp_path / "report.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1200,2000", html.as_uri(), profile=tmp_path / "a")
    assert shot.is_file(), res.stderr[-2000:]
    console = [l for l in res.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not console, console
    dom = _chromium("--dump-dom", html.as_uri(), profile=tmp_path / "b").stdout
    assert dom.count("<svg") == 6 and dom.count('class="rf-boundary"') == 2 and "FAILED" in dom
    image = Image.open(shot)
    assert image.size == (1200, 2000)
    for colour, least in ((plots.BLUE, 2000), (plots.ORANGE, 2000), (plots.RED, 50)):  # bars, curves, RF line
        assert _colour_pixels(image, colour) >= least, colour
