"""Fidelity without labels: `onnxmbs evaluate MODEL --data D --reference ORIGINAL` on any outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import onnxruntime as ort
from click.testing import CliRunner

import onnxmbs
from graphs import GraphBuilder
from onnxmbs.cli import main
from onnxmbs.data.labelled import has_labels
from onnxmbs.data.normalisation import preprocess_metadata, set_metadata


def two_heads(scale: float = 1.0, *, channels: int = 8) -> onnx.ModelProto:
    """A dense (segmentation-like) map and a pooled vector: two outputs of different shapes."""
    g = GraphBuilder(("N", 3, 8, 8))
    y = g.relu(g.conv(g.input.name, 3, channels, name="c1"))
    dense = g.op("Mul", [g.conv(y, channels, 4, k=1, name="head"), g.const(np.float32(scale))])
    pooled = g.op("GlobalAveragePool", [y])
    model = g.build([dense, pooled])
    set_metadata(model, preprocess_metadata("raw"))
    return model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})


def test_has_labels(tmp_path: Path):
    np.savez(tmp_path / "l.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=[0, 1])
    np.savez(tmp_path / "u.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    np.save(tmp_path / "u.npy", np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    assert has_labels(tmp_path / "l.npz") and has_labels(tmp_path / "classes")
    assert not has_labels(tmp_path / "u.npz") and not has_labels(tmp_path / "u.npy")
    assert not has_labels(tmp_path / "flat")
    assert has_labels((np.zeros((1, 3, 8, 8)), np.zeros(1))) and not has_labels(np.zeros((1, 3, 8, 8)))


def test_unlabelled_fidelity_of_a_two_output_model(tmp_path: Path):
    ref, model = tmp_path / "ref.onnx", tmp_path / "m.onnx"
    onnx.save(two_heads(1.0), str(ref))
    onnx.save(two_heads(1.25), str(model))  # the dense head 1.25 x the reference's, the pooled one equal
    x = np.random.default_rng(3).random((6, 3, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)  # float: the model input as it is
    result = run("evaluate", model, "--data", tmp_path / "x.npy", "--reference", ref, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    want, got = outputs(two_heads(1.0), x), outputs(two_heads(1.25), x)
    dense, pooled = doc["fidelity"]["outputs"]
    assert doc["fidelity"]["images"] == 6
    expected = float(np.linalg.norm(got[0] - want[0]) / np.linalg.norm(want[0]))
    assert abs(dense["relative_l2"] - expected) < 1e-5 and abs(expected - 0.25) < 1e-4
    assert pooled["relative_l2"] == 0.0 and pooled["max_abs"] == 0.0 and abs(pooled["cosine"] - 1) < 1e-9
    api = onnxmbs.compare(model, ref, x)  # the same from Python
    assert abs(api.outputs[0].relative_l2 - expected) < 1e-5


def test_bad_reference_and_missing_labels_are_one_line(tmp_path: Path):
    ref, model, other = tmp_path / "ref.onnx", tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(two_heads(), str(ref))
    onnx.save(two_heads(), str(model))
    g = GraphBuilder(("N", 3, 8, 8))
    onnx.save(g.build([g.relu(g.conv(g.input.name, 3, 4, name="c1"))]), str(other))  # one output, not two
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32))
    for args, words in (((model, "--data", tmp_path / "x.npy"), "unlabelled"),
                        ((other, "--data", tmp_path / "x.npy", "--reference", ref), "output(s)")):
        result = run("evaluate", *args)
        errors = [line for line in result.output.splitlines() if line.startswith("error")]
        assert result.exit_code == 1 and len(errors) == 1 and words in errors[0], result.output
        assert "Traceback" not in result.output


def test_compact_eval_data_without_labels_records_fidelity(tmp_path):
    """``compact --eval-data`` on unlabelled images: the record keeps the fidelity of the compact model's
    outputs to the original's, computed here with numpy from both files."""
    import json

    import onnxruntime as ort
    from click.testing import CliRunner

    from onnxmbs.cli import main

    root = Path(__file__).resolve().parents[1]
    model, npz = root / "models" / "resnet20_digits.onnx", root / "models" / "digits_calib.npz"
    x = np.load(npz)["x"][:40]
    np.save(tmp_path / "unlabelled.npy", x)
    plan, out = tmp_path / "plan.json", tmp_path / "c.onnx"
    run = CliRunner().invoke
    assert run(main, ["plan", str(model), "--data", str(npz), "--max-images", "64", "-o", str(plan)]).exit_code == 0
    res = run(main, ["compact", str(model), "--plan", str(plan), "-o", str(out), "--eval-data",
                     str(tmp_path / "unlabelled.npy"), "--repeats", "0"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "c.onnx.json").read_text())
    assert "accuracy" not in record and record["fidelity"]["images"] == 40
    (got,) = record["fidelity"]["outputs"]

    def outputs(path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)

    y, ref = outputs(out), outputs(model)
    assert got["relative_l2"] == pytest.approx(np.linalg.norm(y - ref) / np.linalg.norm(ref), rel=1e-4)
    assert "fidelity" in res.output and "relative L2 error to the original" in res.output
