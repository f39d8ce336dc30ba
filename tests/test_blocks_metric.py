"""Block pruning without labels: scored by fidelity to the original model's outputs (the formula checked
here against numpy on the bypassed models), or by the user's own metric; the CLI picks fidelity for
unlabelled data, and bad combinations are usage errors."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxmbs.blocks.discover import find_blocks
from onnxmbs.blocks.quality import fidelity_to, user_metric
from onnxmbs.blocks.scoring import score_blocks
from onnxmbs.cli import main
from onnxmbs.data.labelled import open_images, open_labelled
from onnxmbs.graph.load import load_model
from onnxmbs.stats.accuracy import runnable
from test_blocks import bypass, data_for, dynamic, residual_net

BRANCHES = {"b0": (("b1_c1", "b1_r", "b1_c2"), "b1_add", "stem_relu_out"),
            "b1": (("b2_c1", "b2_r", "b2_c2"), "b2_add", "b1_out_out")}


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0].astype(np.float64)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_fidelity_scores_are_one_minus_the_relative_l2_error_of_the_bypassed_model():
    model = dynamic(residual_net())
    x, _ = data_for(model)
    loaded = load_model(model)
    images = open_images(x, shape=loaded.input.shape, layout="NCHW")
    assert not images.labelled and len(images) == len(x)
    cands = [b for b in find_blocks(loaded) if b.removable]
    result = score_blocks(runnable(loaded), "input", cands, images, quality=fidelity_to(runnable(loaded)),
                          batch_size=16)
    ref = outputs(model, x)
    assert result.accuracy == pytest.approx(1.0)  # the original against itself
    for block, (nodes, join, shortcut) in BRANCHES.items():
        y = outputs(bypass(model, nodes, join, shortcut), x)
        expected = 1 - min(1.0, np.linalg.norm(y - ref) / np.linalg.norm(ref))
        assert result.scores[block] == pytest.approx(expected, rel=1e-5)
        assert 0 < result.scores[block] < 1


def test_a_user_metric_that_recomputes_top1_gives_the_top1_scores(tmp_path):
    model = dynamic(residual_net())
    x, y = data_for(model)
    npz = tmp_path / "d.npz"
    np.savez(npz, images=x, classes_again=y)  # "classes_again" is not a label key: a target for the metric
    metric = tmp_path / "m.py"
    metric.write_text("import numpy as np\n\ndef top1(outputs, targets):\n"
                      "    return float(np.mean(outputs[0].argmax(1) == targets['classes_again']))\n")
    loaded = load_model(model)
    cands = [b for b in find_blocks(loaded) if b.removable]
    labelled = open_labelled((x, y), shape=loaded.input.shape, layout="NCHW")
    builtin = score_blocks(runnable(loaded), "input", cands, labelled, batch_size=16)
    images = open_images(npz, shape=loaded.input.shape, layout="NCHW")
    mine = score_blocks(runnable(loaded), "input", cands, images, quality=user_metric(f"python:{metric}:top1", npz),
                        batch_size=7)
    assert mine.accuracy == pytest.approx(builtin.accuracy) and mine.scores == pytest.approx(builtin.scores)


@pytest.fixture()
def unlabelled(tmp_path):
    model = dynamic(residual_net())
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x, _ = data_for(model)
    np.save(tmp_path / "x.npy", x)
    return path, tmp_path / "x.npy"


def test_cli_scores_unlabelled_data_by_fidelity_and_stops_at_the_loss(unlabelled, tmp_path):
    model, data = unlabelled
    out = tmp_path / "b.json"
    res = run("blocks", model, "--data", data, "--remove", 1, "-o", out)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["metric"] == "fidelity" and doc["baseline_accuracy"] == pytest.approx(1.0)
    first = doc["rounds"][0]
    assert first["removed"] == max(first["scores"], key=first["scores"].get)
    loss = 1 - first["scores"][first["removed"]]
    below = run("blocks", model, "--data", data, "--max-fidelity-loss", loss / 2, "--json")
    assert below.exit_code == 0 and json.loads(below.stdout)["removed"] == []  # the best removal loses too much
    above = run("blocks", model, "--data", data, "--max-fidelity-loss", min(1.0, loss * 1.01 + 1e-6), "--json")
    assert json.loads(above.stdout)["removed"][:1] == [first["removed"]]
    assert "fidelity after" in run("blocks", model, "--data", data, "--remove", 1).output


@pytest.mark.parametrize("args, message", [
    (["--metric", "accuracy", "--remove", "1"], "needs labelled data"),
    (["--metric", "python:x.py:f", "--max-fidelity-loss", "0.1"], "--max-fidelity-loss applies to --metric fidelity"),
    (["--max-fidelity-loss", "0.1", "--max-accuracy-drop", "0.1"], "not both"),
    (["--metric", "mse", "--remove", "1"], "use accuracy, fidelity or python"),
])
def test_cli_usage_errors(unlabelled, args, message):
    model, data = unlabelled
    res = run("blocks", model, "--data", data, *args)
    assert res.exit_code == 2 and message in res.output


def test_a_metric_outside_zero_one_is_one_line(unlabelled, tmp_path):
    model, _ = unlabelled
    x, y = data_for(dynamic(residual_net()))
    np.savez(tmp_path / "d.npz", images=x, t=y)
    (tmp_path / "m.py").write_text("def loss(outputs, targets):\n    return 3.5\n")
    res = run("blocks", model, "--data", tmp_path / "d.npz", "--metric", f"python:{tmp_path / 'm.py'}:loss",
              "--remove", 1, "-o", tmp_path / "b.json")
    assert res.exit_code == 1 and "needs a score in [0, 1]" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "b.json").exists()
