"""A model with dynamic H/W: the size comes from the calibration data; the hint follows the layout."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from graphs import GraphBuilder, classifier
from onnxmbs import MBSError, analyze
from onnxmbs.cli import main


def dynamic_model(path, layout):
    shape = ("N", "H", "W", 3) if layout == "NHWC" else ("N", 3, "H", "W")
    g = GraphBuilder(shape)
    x = g.op("Transpose", [g.input.name], perm=[0, 3, 1, 2]) if layout == "NHWC" else g.input.name
    y = g.relu(g.conv(g.relu(g.conv(x, 3, 4, name="c1")), 4, 4, stride=2, name="c2"))
    model = g.build([classifier(g, y, 4)])
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("layout, hint", [("NHWC", "1,224,224,3"), ("NCHW", "1,3,224,224")])
def test_hint_follows_the_layout(tmp_path, layout, hint):
    with pytest.raises(MBSError, match=f"--input-shape {hint}"):
        analyze(dynamic_model(tmp_path / "m.onnx", layout))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_size_comes_from_array_data(tmp_path, layout):
    model = dynamic_model(tmp_path / "m.onnx", layout)
    images = np.random.default_rng(0).integers(0, 255, (6, 20, 18, 3), dtype=np.uint8)  # NHWC pixels
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", model, "--data", str(tmp_path / "x.npy"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["model"]["shape"] == ([1, 20, 18, 3] if layout == "NHWC" else [1, 3, 20, 18])
    assert doc["settings"]["images"] == 6 and doc["model"]["L"] == 18


def test_size_comes_from_the_first_image_of_a_folder(tmp_path):
    model = dynamic_model(tmp_path / "m.onnx", "NHWC")
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 30, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    result = CliRunner().invoke(main, ["profile", model, "--data", str(folder), "-o", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["model"]["shape"] == [1, 24, 30, 3]


def test_an_explicit_input_shape_still_wins(tmp_path):
    model = dynamic_model(tmp_path / "m.onnx", "NCHW")
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", model, "--data", str(tmp_path / "x.npy"), "--input-shape", "1,3,16,16",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["model"]["shape"] == [1, 3, 16, 16]
