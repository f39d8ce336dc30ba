"""--metric python:FILE.py:FUNCTION: a user's metric for heads that are not classifiers (the shipped
segmentation example, checked on masks built here), and its failures as one line each."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxmbs.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "tools" / "metrics" / "segmentation.py"


def segmenter(path: Path) -> Path:
    """Per-pixel scores of 2 classes = the input's first 2 channels (a 1x1 conv with identity weights)."""
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[0, 0] = w[1, 1] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["scores"], kernel_shape=[1, 1])], "seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnxruntime reads
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def data(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    images = rng.random((5, 3, 6, 6), dtype=np.float32)  # float: the model input as it is
    masks = rng.integers(0, 2, (5, 6, 6)).astype(np.int64)
    masks[0, 0, :3] = 255  # ignored pixels
    np.savez(tmp_path / "val.npz", images=images, masks=masks)
    return tmp_path / "val.npz", images, masks


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def expected(images: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Pixel accuracy and mean IoU from a confusion matrix (another way than the example's)."""
    pred = (images[:, 1] > images[:, 0]).astype(np.int64)
    keep = masks != 255
    confusion = np.zeros((2, 2))
    np.add.at(confusion, (masks[keep], pred[keep]), 1)
    accuracy = np.trace(confusion) / confusion.sum()
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    return float(accuracy), float(iou.mean())


@pytest.mark.parametrize("function, index", [("pixel_accuracy", 0), ("mean_iou", 1)])
def test_the_segmentation_example_on_masks_built_here(tmp_path, data, function, index):
    path, images, masks = data
    model = segmenter(tmp_path / "seg.onnx")
    result = run("evaluate", model, "--data", path, "--metric", f"python:{EXAMPLE}:{function}", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert abs(doc["metric"]["model"] - expected(images, masks)[index]) < 1e-12
    assert "top1" not in doc  # no labels: no classifier accuracy


def test_with_a_reference_both_models_are_scored(tmp_path, data):
    path, images, masks = data
    model = segmenter(tmp_path / "seg.onnx")
    result = run("evaluate", model, "--data", path, "--reference", model, "--metric",
                 f"python:{EXAMPLE}:mean_iou", "--json")
    doc = json.loads(result.stdout)
    assert doc["metric"]["model"] == doc["metric"]["reference"]
    assert doc["fidelity"]["outputs"][0]["relative_l2"] == 0.0


def test_metric_failures_are_one_line(tmp_path, data):
    path, _, _ = data
    model = segmenter(tmp_path / "seg.onnx")
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(outputs, targets):\n    return targets['boxes']\n"
                   "def text(outputs, targets):\n    return 'high'\n")
    cases = {f"python:{tmp_path / 'none.py'}:f": "not found",
             f"python:{bad}:missing": "no function 'missing'",
             f"python:{bad}:broken": "raised KeyError",
             f"python:{bad}:text": "not a number",
             "mean_iou": "python:FILE.py:FUNCTION"}
    for spec, words in cases.items():
        result = run("evaluate", model, "--data", path, "--metric", spec)
        errors = [line for line in result.output.splitlines() if line.startswith("error")]
        assert result.exit_code == 1 and len(errors) == 1 and words in errors[0], (spec, result.output)
        assert "Traceback" not in result.output


def test_targets_of_another_length_or_of_python_objects_are_refused(tmp_path, data):
    _, images, masks = data
    model = segmenter(tmp_path / "seg.onnx")
    spec = f"python:{EXAMPLE}:mean_iou"
    np.savez(tmp_path / "short.npz", images=images, masks=masks[:3])
    boxes = np.empty(5, dtype=object)
    boxes[:] = [np.zeros((k, 4)) for k in range(5)]  # a list of box arrays of varying length
    np.savez(tmp_path / "objects.npz", images=images, masks=masks, boxes=boxes)
    for file, words in (("short.npz", "the targets 'masks' (3) have another length"),
                        ("objects.npz", "array of Python objects")):
        for command in (["evaluate", model], ["blocks", model, "--remove", 1]):
            result = run(*command, "--data", tmp_path / file, "--metric", spec)
            errors = [line for line in result.output.splitlines() if line.startswith("error")]
            assert result.exit_code == 1 and len(errors) == 1 and words in errors[0], (command, result.output)


def test_nan_in_the_data_is_refused_by_every_command_that_reads_it(tmp_path):
    from graphs import GraphBuilder

    g = GraphBuilder(("N", 3, 8, 8))
    onnx.save(g.build([g.relu(g.conv(g.relu(g.conv("input", 3, 8, name="a")), 8, 8, stride=2, name="b"))]),
              str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).random((6, 3, 8, 8), dtype=np.float32)
    x[2, 0, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    from test_reconstruct import cut_plan

    doc, _ = cut_plan(onnx.load(str(tmp_path / "m.onnx")), {"a": 6})
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    out = tmp_path / "c.onnx"
    for args in (["plan", tmp_path / "m.onnx", "--data", tmp_path / "nan.npy"],
                 ["evaluate", tmp_path / "m.onnx", "--data", tmp_path / "nan.npy", "--reference", tmp_path / "m.onnx"],
                 ["compact", tmp_path / "m.onnx", "--plan", tmp_path / "plan.json", "-o", out, "--reconstruct",
                  "--data", tmp_path / "nan.npy"]):
        result = run(*args, "--preprocess", "raw")
        errors = [line for line in result.output.splitlines() if line.startswith("error")]
        assert result.exit_code == 1 and len(errors) == 1 and "NaN or infinite values" in errors[0], result.output
    assert not out.exists()
