"""Labelled data, accuracy and `onnxmbs evaluate` — expectations computed here with numpy."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from graphs import GraphBuilder
from onnxmbs.cli import main
from onnxmbs.errors import MBSError
from onnxmbs.stats.accuracy import evaluate
from onnxmbs.data.labelled import open_labelled
from onnxmbs.data.normalisation import PRESETS

SHAPE = (1, 3, 8, 8)


def linear_classifier(path, *, classes=10, seed=0, batch=1):
    """GAP -> Flatten -> Gemm: scores computable with numpy; returns (path, W, b)."""
    g = GraphBuilder((batch, 3, 8, 8), seed=seed)
    w = g.rng.standard_normal((classes, 3)).astype(np.float32)
    b = g.rng.standard_normal(classes).astype(np.float32) * 0.1
    pooled = g.op("GlobalAveragePool", ["input"])
    flat = g.op("Flatten", [pooled], axis=1)
    out = g.op("Gemm", [flat, g.const(w), g.const(b)], transB=1)
    onnx.save(g.build([out]), path)
    return path, w, b


def numpy_scores(x, w, b):
    return x.mean(axis=(2, 3)) @ w.T + b


def pixels(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_npz_images_labels_are_preprocessed_in_model_layout(tmp_path):
    px, y = pixels(7), np.arange(7) % 3
    np.savez(tmp_path / "d.npz", images=px, labels=y)
    data = open_labelled(tmp_path / "d.npz", shape=SHAPE, layout="NCHW", preprocess=PRESETS["raw"])
    assert data.x.shape == (7, 3, 8, 8) and data.y.tolist() == y.tolist()
    np.testing.assert_allclose(data.x, px.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)


def test_folder_classes_sorted_or_from_file(tmp_path):
    root = tmp_path / "imgs"
    for name, count in (("zebra", 2), ("ant", 3), ("cat", 1)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(pixels(1, seed=i)[0]).save(root / name / f"{i}.png")
    data = open_labelled(root, shape=(1, 8, 8, 3), layout="NHWC", preprocess=PRESETS["raw"])
    assert data.classes == ("ant", "cat", "zebra") and data.y.tolist() == [0, 0, 0, 1, 2, 2]
    (tmp_path / "classes.txt").write_text("zebra\ncat\n\nant\n")
    data = open_labelled(root, shape=(1, 8, 8, 3), layout="NHWC", preprocess=PRESETS["raw"], classes=tmp_path / "classes.txt")
    assert data.classes == ("zebra", "cat", "ant") and data.y.tolist() == [0, 0, 1, 2, 2, 2]
    np.testing.assert_allclose(data.x[0], pixels(1, seed=0)[0] / 255.0, rtol=1e-6)


def test_accuracy_and_agreement_match_numpy(tmp_path):
    path, w, b = linear_classifier(tmp_path / "m.onnx", seed=0)
    ref, w2, b2 = linear_classifier(tmp_path / "r.onnx", seed=5)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 50)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 50, 16)]  # (x, y) batches through the API
    data = open_labelled(batches, shape=SHAPE, layout="NCHW")
    acc = evaluate(path, data, reference=ref, batch_size=7)
    s, s2 = numpy_scores(x, w, b), numpy_scores(x, w2, b2)
    top5 = np.argsort(-s, axis=1)[:, :5]
    assert acc.images == 50 and acc.classes == 10
    assert acc.top1 == pytest.approx(np.mean(s.argmax(1) == y))
    assert acc.top5 == pytest.approx(np.mean([y[i] in top5[i] for i in range(50)]))
    assert acc.agreement == pytest.approx(np.mean(s.argmax(1) == s2.argmax(1)))
    assert 0 < acc.top1 < acc.top5 < 1


def test_fixed_batch_model_pads_the_last_batch(tmp_path):
    path, w, b = linear_classifier(tmp_path / "m.onnx", classes=4, batch=4)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((10, 3, 8, 8)).astype(np.float32), rng.integers(0, 4, 10)
    acc = evaluate(path, open_labelled((x, y), shape=(4, 3, 8, 8), layout="NCHW"), batch_size=10)
    assert acc.top1 == pytest.approx(np.mean(numpy_scores(x, w, b).argmax(1) == y)) and acc.top5 is None


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_evaluate_cli_json(tmp_path):
    path, w, b = linear_classifier(tmp_path / "m.onnx")
    px, y = pixels(20), np.arange(20) % 10
    np.savez(tmp_path / "d.npz", images=px, labels=y)
    res = run("evaluate", path, "--data", tmp_path / "d.npz", "--preprocess", "raw", "--json")
    assert res.exit_code == 0, res.output
    expected = np.mean(numpy_scores(px.transpose(0, 3, 1, 2) / 255.0, w, b).argmax(1) == y)
    assert json.loads(res.stdout)["top1"] == pytest.approx(expected)


@pytest.mark.parametrize("case", ["npz_without_labels", "loose_images", "npy", "label_out_of_range",
                                  "negative_label", "class_count", "length"])
def test_evaluate_cli_errors_are_one_line(tmp_path, case):
    path, _, _ = linear_classifier(tmp_path / "m.onnx", classes=10)
    data = tmp_path / "d.npz"
    px = pixels(4)
    if case == "npz_without_labels":
        np.savez(data, images=px)
    elif case == "loose_images":
        data = tmp_path / "imgs"
        data.mkdir()
        Image.fromarray(px[0]).save(data / "a.png")
    elif case == "npy":
        data = tmp_path / "d.npy"
        np.save(data, px)
    elif case == "label_out_of_range":
        np.savez(data, images=px, labels=np.array([0, 1, 10, 2]))
    elif case == "negative_label":
        np.savez(data, images=px, labels=np.array([0, -1, 1, 2]))
    elif case == "class_count":
        data = tmp_path / "imgs"
        for name in "abc":
            (data / name).mkdir(parents=True)
            Image.fromarray(px[0]).save(data / name / "a.png")
    else:
        np.savez(data, images=px, labels=np.array([0, 1, 2]))
    res = CliRunner().invoke(main, ["evaluate", str(path), "--data", str(data)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    words = {"npz_without_labels": "unlabelled", "loose_images": "unlabelled", "npy": "unlabelled",
             "label_out_of_range": "out of range", "negative_label": "negative", "class_count": "3 classes",
             "length": "labels"}
    assert words[case] in lines[0]


def test_bare_array_is_unlabelled():
    with pytest.raises(MBSError, match="unlabelled"):
        open_labelled(np.zeros((2, 3, 8, 8), np.float32), shape=SHAPE, layout="NCHW")
