"""onnxmbs.compact.writer on tf2onnx-exported Keras CNNs (NHWC input, BN folded or left as Mul/Add,
channel shuffles as Reshape/Transpose with shapes computed from Shape + Concat + Cast)."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from keras import layers  # noqa: E402

from onnxmbs.graph.analysis import analyze  # noqa: E402
from onnxmbs.compact.writer import compact_model  # noqa: E402
from onnxmbs.workflow.plan import plan_model  # noqa: E402
from onnxmbs.zoo import keras_models  # noqa: E402
from onnxmbs.zoo.configuration import configuration_from_plan  # noqa: E402
from onnxmbs.zoo.export import export_keras  # noqa: E402


def randomize(model, seed: int = 0):
    """Trained-like BatchNorm statistics (default ones make tf2onnx share equal constants)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.random(n) + 0.5, rng.standard_normal(n) * 0.1,
                               rng.standard_normal(n) * 0.1, rng.random(n) + 0.5])
    return model


def cbr(x, c: int, k: int = 1, s: int = 1, act: str | None = "relu"):
    x = layers.BatchNormalization()(layers.Conv2D(c, k, s, padding="same", use_bias=False)(x))
    return layers.ReLU(6.0 if act == "relu6" else None)(x) if act else x


def dw(x, s: int = 1):
    return layers.ReLU(6.0)(layers.BatchNormalization()(layers.DepthwiseConv2D(3, s, padding="same", use_bias=False)(x)))


def classify(inp, x):
    return keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))


def mini_v2():
    inp = keras.Input((32, 32, 3), name="input")
    x = cbr(inp, 8, 3, 2, "relu6")
    x = layers.Add()([x, cbr(dw(x), 8, act=None)])
    x = cbr(dw(cbr(x, 24, act="relu6"), 2), 12, act=None)
    x = layers.Add()([x, cbr(dw(cbr(x, 36, act="relu6")), 12, act=None)])
    return classify(inp, cbr(x, 32, act="relu6"))


def mini_dense():
    inp = keras.Input((32, 32, 3), name="input")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    for b in range(3):
        for _ in range(2):
            y = layers.Conv2D(16, 1, use_bias=False)(layers.ReLU()(layers.BatchNormalization()(x)))
            y = layers.Conv2D(4, 3, padding="same", use_bias=False)(layers.ReLU()(layers.BatchNormalization()(y)))
            x = layers.Concatenate()([x, y])
        if b < 2:
            x = layers.Conv2D(8, 1, use_bias=False)(layers.ReLU()(layers.BatchNormalization()(x)))
            x = layers.AveragePooling2D(2)(x)
    return classify(inp, layers.ReLU()(layers.BatchNormalization()(x)))


def shuffle(x, groups: int):
    h, w, c = x.shape[1:]
    x = layers.Permute((1, 2, 4, 3))(layers.Reshape((h, w, groups, c // groups))(x))
    return layers.Reshape((h, w, c))(x)


def mini_shuffle():
    """ShuffleNet-style units (tf2onnx cannot export grouped Conv2D, so the 1x1 convs are dense)."""
    inp = keras.Input((32, 32, 3), name="input")
    x = cbr(inp, 12, 3, 2)
    for c_out, s in ((48, 2), (48, 1)):
        c_in = x.shape[-1]
        y = shuffle(cbr(x, c_out // 4), 3)
        y = layers.BatchNormalization()(layers.DepthwiseConv2D(3, s, padding="same", use_bias=False)(y))
        y = cbr(y, c_out - c_in if s == 2 else c_out, act=None)
        pooled = layers.AveragePooling2D(3, 2, padding="same")(x) if s == 2 else None
        x = layers.ReLU()(layers.Concatenate()([pooled, y]) if s == 2 else layers.Add()([x, y]))
    return classify(inp, x)


FAMILIES = {
    "resnet": lambda: keras_models.cifar_resnet(20, widths=[8, 16, 32]),
    "mobilenet_v1": lambda: keras_models.mobilenet_v1(widths=[8, 8, 16, 16, 32, 32], num_classes=10, input_size=32),
    "mobilenet_v2": mini_v2, "densenet": mini_dense, "shufflenet": mini_shuffle,
}


def outputs(model_or_path, x: np.ndarray) -> np.ndarray:
    data = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_keras_family_compacts_to_the_predicted_count(family, tmp_path):
    path = str(export_keras(randomize(FAMILIES[family]()), tmp_path / f"{family}.onnx"))
    plan = plan_model(path, synthetic=4, preprocess="raw", z=4).document.to_json()
    assert plan["model"]["layout"] == "NHWC"
    result = compact_model(path, plan)
    assert result.params_compact == plan["summary"]["params_compact"] < plan["summary"]["params"]
    assert result.copies == ()
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
    assert outputs(result.model, x).shape == (3, 10)
    identity = compact_model(path, plan_model(path, synthetic=2, preprocess="raw", z=1e6).document.to_json())
    np.testing.assert_array_equal(outputs(identity.model, x), outputs(path, x))


@pytest.mark.parametrize("name", ["resnet20", pytest.param("mobilenet_v1", marks=pytest.mark.slow)])
def test_keras_zoo_compact_equals_zoo_at_the_planned_configuration(name, tmp_path):
    def build(config=None):
        if name == "resnet20":
            return keras_models.cifar_resnet(20, widths=config)
        return keras_models.mobilenet_v1(widths=config, num_classes=10, input_size=32)

    path = str(export_keras(randomize(build()), tmp_path / "full.onnx"))
    plan = plan_model(path, synthetic=4, preprocess="raw").document.to_json()
    result = compact_model(path, plan)
    rebuilt = str(export_keras(randomize(build(configuration_from_plan(name, plan))), tmp_path / "configured.onnx"))
    assert result.params_compact == plan["summary"]["params_compact"] == analyze(rebuilt).shapes.params
    assert result.params_compact < result.params
