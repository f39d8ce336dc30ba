"""compact --quantize int8: the INT8 model stays close to the float one, is checked, measured and recorded;
bad use is a usage error; a model the quantizer cannot handle is one line and nothing is written."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner

from graphs import GraphBuilder, classifier
from onnxmbs.cli import main
from onnxmbs.compact.record import int8_path
from onnxmbs.compact.quantize import QuantizeOptions, quantize_int8
from onnxmbs.data.normalisation import preprocess_metadata, set_metadata
from onnxmbs.graph.load import load_model
from onnxmbs.stats.fidelity import fidelity
from onnxmbs.stats.measure import CalibrationOptions


def net() -> onnx.ModelProto:
    g = GraphBuilder(("N", 3, 16, 16))
    y = g.relu(g.conv(g.relu(g.conv(g.input.name, 3, 16, name="c1")), 16, 32, stride=2, name="c2"))
    model = g.build([classifier(g, y, 32)])
    set_metadata(model, preprocess_metadata("raw"))
    return model


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_tiny_model_quantizes_and_stays_close_to_float(tmp_path: Path):
    model = net()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    calib = tmp_path / "calib.npy"
    np.save(calib, images(64))
    q = quantize_int8(model, load_model(path), QuantizeOptions(CalibrationOptions(data=str(calib), batch_size=16)))
    assert q.images == 64
    ops = {n.op_type for n in q.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    x = images(32, seed=7)  # other images than the calibration's
    want, got = run_onnx(model, x), run_onnx(q.model, x)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 0.05, rel
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_fidelity_is_computed_as_documented():
    a, b = net(), net()
    # b: the classifier's weights scaled by 1.1, so every output is 1.1 x a's
    fc = next(t for t in b.graph.initializer if t.name.startswith("fc") and len(t.dims) == 2)
    bias = next(t for t in b.graph.initializer if t.name.startswith("fcb"))
    assert not np.any(onnx.numpy_helper.to_array(bias))  # zero bias: scaling the weights scales the output
    fc.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(fc) * 1.1, fc.name))
    x = images(8)
    ya, yb = run_onnx(a, x), run_onnx(b, x)
    result = fidelity(b, a, [x[:5], x[5:]])
    (out,) = result.outputs
    assert result.images == 8
    assert math.isclose(out.relative_l2, np.linalg.norm(yb - ya) / np.linalg.norm(ya), rel_tol=1e-5)
    assert math.isclose(out.relative_l2, 0.1, rel_tol=1e-4)
    assert math.isclose(out.cosine, 1.0, rel_tol=1e-6)  # same direction per image
    assert math.isclose(out.max_abs, float(np.max(np.abs(yb - ya))), rel_tol=1e-5)


def _plan(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "m.onnx"
    onnx.save(net(), str(model))
    calib = tmp_path / "calib.npy"
    np.save(calib, (images(48) * 255).astype(np.uint8).transpose(0, 2, 3, 1))  # uint8 NHWC pixels
    plan = tmp_path / "plan.json"
    assert run("plan", model, "--data", calib, "--k", "0.5", "-o", plan).exit_code == 0
    return model, calib, plan


def test_cli_writes_the_int8_model_and_its_record(tmp_path: Path):
    model, calib, plan = _plan(tmp_path)
    out = tmp_path / "c.onnx"
    result = run("compact", model, "--plan", plan, "-o", out, "--data", calib, "--quantize", "int8",
                 "--repeats", "2")
    assert result.exit_code == 0, result.output
    int8 = int8_path(out)
    assert int8 == tmp_path / "c.int8.onnx" and int8.exists() and out.exists()
    onnx.checker.check_model(onnx.load(str(int8)))
    record = json.loads((tmp_path / "c.int8.onnx.json").read_text())
    assert record["schema"] == "onnxmbs.int8/1" and record["source"] == str(out)
    assert record["quantization"]["activations"] == "uint8" and record["quantization"]["images"] == 48
    assert record["normalisation"]["preset"] == "raw" and record["normalisation"]["origin"] == "model metadata"
    assert record["bytes"]["int8"] == int8.stat().st_size
    assert record["bytes"]["compact"] == out.stat().st_size
    assert {"original_ms", "compact_ms", "int8_ms"} <= set(record["latency"])
    assert set(record["fidelity"]) == {"data", "compact", "int8"}  # no labels: fidelity to the original
    assert record["fidelity"]["int8"]["outputs"][0]["relative_l2"] < 0.2
    assert "c.int8.onnx" in result.output


def test_quantize_without_data_is_a_usage_error(tmp_path: Path):
    model, _, plan = _plan(tmp_path)
    result = run("compact", model, "--plan", plan, "-o", tmp_path / "c.onnx", "--quantize", "int8")
    assert result.exit_code == 2
    assert "--data" in result.output
    assert not (tmp_path / "c.onnx").exists()


def test_a_model_the_quantizer_cannot_handle_is_one_line_and_nothing_is_written(tmp_path: Path, monkeypatch):
    import onnxruntime.quantization as quantization

    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported op type in node 'c1'\nTraceback details the user does not need")

    monkeypatch.setattr(quantization, "quantize_static", refuse)
    model, calib, plan = _plan(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run("compact", model, "--plan", plan, "-o", tmp_path / "c.onnx", "--data", calib, "--quantize", "int8",
                 "--repeats", "0")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip() and "normalisation of" not in line]
    assert len(lines) == 1 and "quantizer cannot handle" in lines[0] and "Unsupported op" in lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # neither c.onnx nor c.int8.onnx
