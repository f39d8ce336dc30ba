"""Saved statistics: `onnxmbs profile` writes them, `--stats` reads them back for the same model only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxmbs.graph.analysis import analyze
from onnxmbs.cli import main
from onnxmbs.errors import MBSError
from onnxmbs.stats.measure import CalibrationOptions, load_stats, measure, measure_or_load
from onnxmbs.stats.statsfile import SCHEMA, save_stats

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
NPZ = ROOT / "models" / "digits_calib.npz"
IMAGES = "64"


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stats") / "stats.json"
    res = run("profile", MODEL, "--data", NPZ, "--max-images", IMAGES, "-o", out)
    assert res.exit_code == 0, res.output
    assert "64 images" in res.output and str(out) in res.output
    return out


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """The same network with another doc string: another sha256."""
    proto = onnx.load(str(MODEL))
    proto.doc_string = "a re-export"
    path = tmp_path_factory.mktemp("other") / "other.onnx"
    onnx.save(proto, str(path))
    return path


def test_profile_writes_counts_with_the_model_hash(stats_file):
    doc = json.loads(stats_file.read_text())
    analysis = analyze(MODEL)
    assert doc["schema"] == SCHEMA and doc["images"] == 64
    assert doc["model"]["sha256"] == analysis.loaded.sha256
    assert doc["data"]["synthetic"] is False and "digits_calib.npz" in doc["data"]["source"]
    taps = {t.tensor for t in analysis.taps.values() if t is not None}
    assert {t["tensor"] for t in doc["taps"]} == taps
    for tap in doc["taps"]:
        assert len(tap["nonzero"]) == tap["channels"] and tap["per_image"] > 0
        assert all(0 <= v <= 64 * tap["per_image"] for v in tap["nonzero"])


def test_saved_counts_round_trip_exactly(tmp_path):
    analysis = analyze(MODEL)
    stats, info = measure(analysis, CalibrationOptions(data=str(NPZ), max_images=32))
    path = save_stats(tmp_path / "s.json", analysis, stats, info=info)
    loaded = load_stats(path, analysis).statistics
    assert loaded.images == stats.images == 32
    for tensor, counts in stats.taps.items():
        np.testing.assert_array_equal(loaded.taps[tensor].nonzero, counts.nonzero)
        assert loaded.p_nonzero(tensor) == stats.p_nonzero(tensor)


def test_plan_with_stats_equals_plan_with_data(stats_file, tmp_path):
    by_stats, by_data = tmp_path / "a.json", tmp_path / "b.json"
    assert run("plan", MODEL, "--stats", stats_file, "-o", by_stats).exit_code == 0
    assert run("plan", MODEL, "--data", NPZ, "--max-images", IMAGES, "-o", by_data).exit_code == 0
    a, b = json.loads(by_stats.read_text()), json.loads(by_data.read_text())
    assert [m["beta"] for m in a["macroblocks"]] == [m["beta"] for m in b["macroblocks"]]
    assert a["summary"] == b["summary"] and a["settings"]["stats_file"] == str(stats_file)


def test_stats_from_another_model_are_refused(stats_file, other_model):
    res = run("plan", other_model, "--stats", stats_file)
    assert res.exit_code == 1
    line = res.output.strip()
    assert "\n" not in line and "different model" in line and "onnxmbs profile" in line
    for command in ("sweep", "report"):
        extra = ["-o", stats_file.parent / "r.json"] if command == "report" else []
        res = run(command, other_model, "--stats", stats_file, *extra)
        assert res.exit_code == 1 and ("different model" in res.output or "no --stats file" in res.output)


def test_stats_at_another_input_shape_are_refused(stats_file, tmp_path):
    doc = json.loads(stats_file.read_text())
    doc["model"]["shape"] = [1, 3, 64, 64]
    bad = tmp_path / "shape.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(MBSError, match="input shape"):
        load_stats(bad, analyze(MODEL))


def test_several_stats_files_are_matched_by_hash(stats_file, other_model, tmp_path):
    analysis = analyze(other_model)
    measured = measure_or_load(analysis, stats=[stats_file], options=CalibrationOptions(data=str(NPZ), max_images=16))
    assert measured.statistics.images == 16  # the file is not this model's: measured instead
    with pytest.raises(MBSError, match="no --stats file"):
        measure_or_load(analysis, stats=[stats_file, stats_file])


@pytest.mark.parametrize("content, message", [("{", "not valid JSON"), ('{"schema": "x"}', "not an onnxmbs stats")])
def test_bad_stats_files_give_one_line_errors(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    res = run("plan", MODEL, "--stats", bad)
    assert res.exit_code == 1 and message in res.output and res.output.count("\n") == 1
    res = run("plan", MODEL, "--stats", tmp_path / "missing.json")
    assert res.exit_code == 1 and "stats file not found" in res.output


def test_stats_and_data_together_is_a_usage_error(stats_file):
    assert run("plan", MODEL, "--stats", stats_file, "--data", NPZ).exit_code == 2
    assert run("sweep", MODEL, "--stats", stats_file, "--synthetic", "4").exit_code == 2
    assert run("profile", MODEL, "-o", stats_file.parent / "x.json").exit_code == 2
