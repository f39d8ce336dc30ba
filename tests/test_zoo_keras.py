"""Keras zoo: same configurations as the torch builders, keras.applications parameter counts."""
from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from onnxmbs.errors import MBSError  # noqa: E402
from onnxmbs.zoo import build  # noqa: E402
from onnxmbs.zoo import keras_models as km  # noqa: E402


def bn_channels(model) -> int:
    return sum(layer.gamma.shape[0] for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def conv_widths(model) -> list[int]:
    return [layer.filters for layer in model.layers if type(layer) is keras.layers.Conv2D]


@pytest.mark.parametrize(("ours", "application", "expected"), [
    (km.mobilenet_v1, keras.applications.MobileNet, 4_253_864),
    (km.mobilenet_v2, keras.applications.MobileNetV2, 3_538_984),
])
def test_default_counts_match_keras_applications(ours, application, expected: int) -> None:
    reference = application(weights=None)
    assert reference.count_params() == expected
    model = ours()
    assert km.count_params(model) == model.count_params() == expected
    assert km.count_params(model, trainable_only=True) == sum(
        int(v.numpy().size) for v in reference.trainable_weights)


@pytest.mark.parametrize(("name", "config"), [
    ("mobilenet_v1", {"widths": [32, 64, 128, 256, 474, 879]}),
    ("mobilenet_v2", {"betas": [1, 1, 0.9447, 0.7978]}),
    ("resnet20", {"widths": [16, 30, 47]}),
])
def test_same_trainable_count_as_torch(name: str, config: dict) -> None:
    pytest.importorskip("torch")
    from onnxmbs.zoo.torch_resnet import count_params as torch_count

    keras_model = build(name, framework="keras", **config)
    torch_model = build(name, framework="torch", **config)
    assert km.count_params(keras_model, trainable_only=True) == torch_count(torch_model)
    assert km.count_params(keras_model) == torch_count(torch_model) + 2 * bn_channels(keras_model)


def test_mobilenet_v1_widths_reach_pointwise_convs() -> None:
    model = km.mobilenet_v1(widths=[8, 16, 24, 32, 40, 48], num_classes=3, input_size=64)
    assert conv_widths(model) == [8, 16, 24, 24, 32, 32, 40, 40, 40, 40, 40, 40, 48, 48]
    assert model.output.shape == (None, 3)
    assert model.inputs[0].shape == (None, 64, 64, 3)


def test_cifar_resnet_shapes_and_errors() -> None:
    model = build("resnet32", framework="keras", widths=[8, 16, 32], num_classes=5)
    assert model.output.shape == (None, 5)
    assert conv_widths(model).count(8) == 1 + 2 * 5
    with pytest.raises(MBSError, match="6n\\+2"):
        km.cifar_resnet(21)
    with pytest.raises(MBSError, match="too small"):
        km.mobilenet_v2(input_size=16)
