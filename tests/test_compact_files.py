"""compact counts every byte of a model with external data, and writes external data when it must."""
from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner

from graphs import GraphBuilder, classifier
from onnxmbs.cli import main
from onnxmbs.compact import writer


def net():
    g = GraphBuilder(("N", 3, 8, 8))
    y = g.relu(g.conv(g.relu(g.conv(g.input.name, 3, 16, name="c1")), 16, 32, stride=2, name="c2"))
    return g.build([classifier(g, y, 32)])


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def plan_for(model_path, tmp_path):
    plan = tmp_path / "plan.json"
    assert run("plan", model_path, "--synthetic", "4", "--k", "0.3", "-o", plan).exit_code == 0
    return plan


def test_external_data_bytes_are_counted_and_kept_external(tmp_path):
    model = tmp_path / "model.onnx"
    onnx.save_model(net(), str(model), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    original = model.stat().st_size + (tmp_path / "model.onnx.data").stat().st_size
    assert (tmp_path / "model.onnx.data").stat().st_size > 4 * model.stat().st_size  # the weights live there
    out = tmp_path / "out" / "compact.onnx"
    result = run("compact", model, "--plan", plan_for(model, tmp_path), "-o", out, "--repeats", "0")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "compact.onnx.json").read_text())
    data = tmp_path / "out" / "compact.onnx.data"
    assert record["bytes_original"] == original
    assert data.is_file() and record["bytes_compact"] == out.stat().st_size + data.stat().st_size
    assert record["bytes_compact"] < record["bytes_original"]  # a real reduction, not +34,000 %
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    loaded = onnx.load(str(out))
    onnx.checker.check_model(loaded)


def test_outputs_over_the_protobuf_limit_get_external_data(tmp_path, monkeypatch):
    model = tmp_path / "model.onnx"
    onnx.save(net(), str(model))
    monkeypatch.setattr(writer, "EXTERNAL_OVER", 1000)  # stands in for ~2 GB
    out = tmp_path / "compact.onnx"
    result = writer.write_compact(str(model), str(plan_for(model, tmp_path)), out, latency_repeats=0)
    data = tmp_path / "compact.onnx.data"
    assert data.is_file() and result.bytes_compact == out.stat().st_size + data.stat().st_size
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    import onnxruntime as ort
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.shape == (2, 10)
