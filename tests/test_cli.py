"""The CLI end to end on the embedded model, and its exits on bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from graphs import GraphBuilder
from onnxmbs.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
CALIB = ROOT / "models" / "digits_calib"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_analyze_embedded_model():
    res = run("analyze", MODEL)
    assert res.exit_code == 0, res.output
    assert "macroblock" in res.output and "32x32" in res.output and "8x8" in res.output
    data = json.loads(run("analyze", MODEL, "--json").output)
    assert len(data["macroblocks"]) == 3 and all(l["p_nonzero"] == 1.0 for l in data["layers"])


def test_plan_embedded_model_writes_the_schema(tmp_path):
    out = tmp_path / "sub" / "plan.json"
    res = run("plan", MODEL, "--data", CALIB, "--preprocess", "raw", "-o", out)
    assert res.exit_code == 0, res.output
    assert "beta" in res.output and "fewer" in res.output
    plan = json.loads(out.read_text())
    assert plan["schema"] == "onnxmbs.plan/1"
    assert set(plan) >= {"model", "settings", "layers", "macroblocks", "groups", "summary"}
    assert set(plan["model"]) >= {"path", "sha256", "input", "shape", "layout", "L"}
    assert plan["model"]["L"] == 32 and plan["model"]["layout"] == "NCHW"
    assert plan["settings"]["images"] == 360 and plan["settings"]["synthetic"] is False
    assert set(plan["settings"]) >= {"k", "z", "rf_boundary", "images", "synthetic", "provider", "round_to"}
    layer_keys = {"name", "macroblock", "out_hw", "in_channels", "out_channels", "groups", "kernel", "stride",
                  "dilation", "rf", "flops", "params", "activation", "p_nonzero", "measured", "base", "group",
                  "compact_out_channels"}
    assert all(set(l) >= layer_keys for l in plan["layers"])
    assert all(0.0 < l["p_nonzero"] < 1.0 for l in plan["layers"] if l["measured"])
    betas = [m["beta"] for m in plan["macroblocks"]]
    assert betas[0] == 1.0 and all(0.5 < b <= 1.0 for b in betas) and betas[-1] < 1.0
    s = plan["summary"]
    assert s["params_compact"] < s["params"] and s["param_reduction"] == pytest.approx(
        1 - s["params_compact"] / s["params"])
    assert not list(out.parent.glob(".*tmp"))  # atomic write leaves no temp file


def test_plan_json_to_stdout_and_synthetic_flag():
    res = run("plan", MODEL, "--synthetic", "8", "--batch-size", "4", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["settings"]["synthetic"] is True


def one_line_error(res, code=1):
    assert res.exit_code == code, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert "Traceback" not in err
    return err


def test_malformed_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf")
    err = one_line_error(run("analyze", bad))
    assert "cannot read" in err and err.count("\n") == 1


def test_non_cnn(tmp_path):
    g = GraphBuilder((1, 3, 8, 8))
    flat = g.op("Flatten", [g.input.name])
    path = tmp_path / "mlp.onnx"
    import onnx
    onnx.save(g.build([g.op("MatMul", [flat, g.const(np.ones((192, 4), np.float32))])]), path)
    assert "not a CNN" in one_line_error(run("analyze", path))


def test_dynamic_hw_without_input_shape(tmp_path):
    import onnx
    g = GraphBuilder(("N", 3, "H", "W"))
    path = tmp_path / "dyn.onnx"
    onnx.save(g.build([g.relu(g.conv(g.input.name, 3, 4, name="c"))]), path)
    assert "--input-shape" in one_line_error(run("analyze", path))
    assert run("analyze", path, "--input-shape", "1,3,16,16").exit_code == 0
    assert run("plan", path, "--input-shape", "1,3,16,16", "--synthetic", "2").exit_code == 0


def test_usage_errors_and_missing_files(tmp_path):
    assert run("plan", MODEL).exit_code == 2  # no data source
    assert run("plan", MODEL, "--synthetic", "2", "-o", MODEL).exit_code == 2  # would overwrite the model
    assert run("analyze", MODEL, "--input-shape", "abc").exit_code == 2
    assert "not found" in one_line_error(run("analyze", tmp_path / "missing.onnx"))
    assert "not found" in one_line_error(run("plan", MODEL, "--data", tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image" in one_line_error(run("plan", MODEL, "--data", empty)).lower()


def test_macroblock_override(tmp_path):
    layers = json.loads(run("analyze", MODEL, "--json").output)["layers"]
    first = layers[0]["name"]
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({first: 1}))
    res = json.loads(run("analyze", MODEL, "--json", "--macroblocks", mapping).output)
    moved = {l["name"]: l["macroblock"] for l in res["layers"]}
    assert moved[first] == 1 and len(res["macroblocks"][0]["layers"]) == 6  # the level-0 block lost one
    assert len(res["macroblocks"][1]["layers"]) == 8
    mapping.write_text(json.dumps({"no_such_layer": 1}))
    assert "unknown conv" in one_line_error(run("analyze", MODEL, "--macroblocks", mapping))
    mapping.write_text("[1, 2]")
    assert "JSON object" in one_line_error(run("plan", MODEL, "--synthetic", "2", "--macroblocks", mapping))


def test_outputs_get_normal_permissions(tmp_path):
    import os
    from onnxmbs.files import write_atomic
    path = write_atomic(tmp_path / "x.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
