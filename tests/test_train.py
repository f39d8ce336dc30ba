"""The retraining step: schedule, augmentation, data loading, both trainers and `onnxmbs retrain`."""
from __future__ import annotations

import os
import textwrap
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxmbs.errors import MBSError
from onnxmbs.train import TrainConfig, augment, lr_at
from onnxmbs.data.normalisation import PRESETS
from onnxmbs.data.training import load_dataset


def _bright_dark(n: int = 64, layout: str = "NCHW", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two trivially separable classes: dark and bright 8x8 images."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = (rng.random((n, 3, 8, 8)) * 0.3 + 0.6 * y[:, None, None, None]).astype(np.float32)
    return (x if layout == "NCHW" else x.transpose(0, 2, 3, 1).copy()), y


RAW = PRESETS["raw"]


def test_step_and_cosine_schedules():
    step = TrainConfig(lr=0.1)
    got = [round(lr_at(step, p), 6) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 0.99)]
    assert got == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    cosine = TrainConfig(lr=0.2, schedule="cosine")
    assert lr_at(cosine, 0.0) == pytest.approx(0.2) and lr_at(cosine, 0.5) == pytest.approx(0.1)


def test_config_is_checked():
    with pytest.raises(MBSError, match="unknown schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(MBSError, match="epochs must be at least 1"):
        TrainConfig(epochs=0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_augment_crops_and_flips(layout):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    x = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    rng = np.random.default_rng(0)
    assert np.array_equal(augment(x, rng, layout=layout, crop_pad=0, flip=False), x)
    cropped = augment(x, rng, layout=layout, crop_pad=2, flip=False)
    assert cropped.shape == x.shape
    flipped = [augment(x, np.random.default_rng(s), layout=layout, crop_pad=0, flip=True) for s in range(8)]
    mirror = np.flip(x, axis=3 if layout == "NCHW" else 2)
    assert any(np.array_equal(f[0], mirror[0]) for f in flipped) and any(np.array_equal(f[0], x[0]) for f in flipped)


def test_load_npz_in_both_layouts(tmp_path):
    x, y = _bright_dark(10)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", images=(x.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8), labels=y)
    a = load_dataset(tmp_path / "a.npz", layout="NHWC", normalisation=RAW)
    b = load_dataset(tmp_path / "b.npz", layout="NHWC", normalisation=RAW)
    assert a.x.shape == b.x.shape == (10, 8, 8, 3) and a.num_classes == 2
    np.testing.assert_allclose(a.x, b.x, atol=1 / 255)
    train, held = load_dataset(tmp_path / "a.npz", normalisation=RAW).split(0.2)
    assert len(train) + len(held) == 10 and sorted(set(held.y)) == [0, 1]
    np.savez(tmp_path / "c.npz", pictures=x)
    with pytest.raises(MBSError, match="is unlabelled: it holds arrays"):
        load_dataset(tmp_path / "c.npz", normalisation=RAW)


def test_load_image_folders(tmp_path):
    for label, value in (("cat", 20), ("dog", 220)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 10), (value, value, value)).save(tmp_path / label / f"{i}.png")
    ds = load_dataset(tmp_path, layout="NCHW", size=(8, 8), normalisation=RAW)
    assert ds.x.shape == (6, 3, 8, 8) and ds.classes == ("cat", "dog") and list(ds.y) == [0, 0, 0, 1, 1, 1]
    assert ds.x[0].max() == pytest.approx(20 / 255) and ds.x[-1].min() == pytest.approx(220 / 255)
    with pytest.raises(MBSError, match="not found or not supported"):
        load_dataset(tmp_path / "missing", normalisation=RAW)


def test_torch_trainer_learns_a_separable_task():
    torch = pytest.importorskip("torch")
    from torch import nn

    from onnxmbs.train.torch_trainer import evaluate_torch, train_torch

    torch.manual_seed(0)
    x, y = _bright_dark(64)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    result = train_torch(model, (x, y), config=TrainConfig(epochs=4, batch_size=16, lr=0.05, crop_pad=1), val=(x, y))
    assert len(result.epochs) == 4 and result.epochs[-1].lr == pytest.approx(0.0005)
    assert result.val_accuracy == evaluate_torch(model, x, y) >= 0.9


def _tiny_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)  # the initial weights too: an unlucky draw can leave every ReLU dead
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))


def test_keras_trainer_learns_a_separable_task():
    from onnxmbs.train.keras_trainer import train_keras

    x, y = _bright_dark(64, layout="NHWC")
    model = _tiny_keras()
    result = train_keras(model, (x, y), config=TrainConfig(epochs=6, batch_size=16, lr=0.1, schedule="cosine"),
                         val=(x, y))
    assert len(result.epochs) == 6 and result.val_accuracy >= 0.9


def test_keras_mixed_precision_trains_a_float16_clone_and_writes_back():
    """What runs on a GPU by default, forced here on the CPU."""
    from onnxmbs.train.keras_trainer import evaluate_keras, mixed_precision_clone, train_keras

    x, y = _bright_dark(64, layout="NHWC")
    model = _tiny_keras()
    twin = mixed_precision_clone(model)
    assert twin.layers[1].dtype_policy.name == "mixed_float16" and twin.layers[-1].dtype_policy.name == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(twin.get_weights(), model.get_weights()))
    before = [w.copy() for w in model.get_weights()]
    result = train_keras(model, (x, y), val=(x, y),
                         config=TrainConfig(epochs=6, batch_size=16, lr=0.1, schedule="cosine", mixed_precision=True))
    assert model.layers[1].dtype_policy.name == "float32"  # the caller's model keeps its policy ...
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # ... and gets the weights
    assert result.val_accuracy >= 0.9 and evaluate_keras(model, x, y) >= 0.9


def test_retrain_command_on_a_users_model_file(tmp_path):
    torch = pytest.importorskip("torch")
    from onnxmbs.cli import main
    from onnxmbs.workflow.plan import plan_model
    from onnxmbs.files import write_json

    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn
        def build():
            return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    """))
    import importlib.util

    spec = importlib.util.spec_from_file_location("net", tmp_path / "net.py")
    net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.build().eval(), (torch.rand(1, 3, 8, 8),), str(tmp_path / "net.onnx"), dynamo=False,
                          input_names=["input"], dynamic_axes={"input": {0: "b"}})
    plan = plan_model(tmp_path / "net.onnx", synthetic=4, preprocess="raw", k=0.5).document.to_json()
    write_json(tmp_path / "plan.json", plan)
    x, y = _bright_dark(40)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    result = CliRunner().invoke(main, [
        "retrain", "--model", f"{tmp_path / 'net.py'}:build", "--plan", str(tmp_path / "plan.json"),
        "--data", str(tmp_path / "train.npz"), "--epochs", "2", "--batch-size", "8", "--no-flip", "--crop-pad", "1",
        "--save", str(tmp_path / "compact.pt"), "--progress", "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 0, result.output
    # the exported model carries the normalisation it was trained with: the plan's (raw), not a default
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "out.onnx")).metadata_props}
    assert meta["onnxmbs.preprocess"] == "raw"
    assert "normalisation of the training data of" in result.output and "as recorded in the plan" in result.output
    assert f"(ONNX, BatchNorm folded; the plan predicts {plan['summary']['params_compact']:,})" in result.output
    own = sum(p.numel() for p in net.build().parameters())  # the framework's count, BatchNorm unfolded
    assert f"{own:,} -> " in result.output and "as PyTorch parameters()" in result.output
    assert "epoch 1/2" in result.output and "epoch 2/2" in result.output and "loss " in result.output
    assert "held-out acc " in result.output  # the bar's last word on each epoch
    assert "held-out accuracy" in result.output and (tmp_path / "compact.pt").is_file()
    bad = CliRunner().invoke(main, ["retrain", "--zoo", "resnet20", "--init", "inherit", "--plan",
                                    str(tmp_path / "plan.json"), "--data", str(tmp_path / "train.npz")])
    assert bad.exit_code == 1 and "inherit needs trained weights" in bad.output
