"""The same architecture exported from PyTorch (dynamo) and from Keras 3 (tf2onnx) analyses the same."""
from __future__ import annotations

import os

import numpy as np
import pytest

from onnxmbs import analyze

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def torch_net():
    import torch.nn as nn
    torch_layers = [
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ]
    return nn.Sequential(*torch_layers).eval()


def keras_net():
    import keras
    from keras import layers as L
    x = inp = keras.Input((32, 32, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(x)))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(x)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", dilation_rate=2, use_bias=False)(x)))
    out = L.Dense(10)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def export_torch(path):
    import torch
    model = torch_net()
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))


def export_keras(path):
    import tensorflow as tf
    import tf2onnx
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(keras_net(), input_signature=spec, opset=17)
    path.write_bytes(proto.SerializeToString())


def summary(analysis):
    where = analysis.macroblock_of()
    return [(c.out_hw, c.in_channels, c.out_channels, c.groups, c.kernel, c.rf, c.flops, where.get(c.name))
            for c in analysis.layers]


def test_same_macroblocks_rf_and_macs(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")
    export_torch(tmp_path / "t.onnx")
    export_keras(tmp_path / "k.onnx")
    t, k = analyze(tmp_path / "t.onnx"), analyze(tmp_path / "k.onnx")
    assert t.loaded.input.layout == "NCHW" and k.loaded.input.layout == "NHWC"
    assert summary(t) == summary(k)
    assert [c.rf for c in t.layers] == [3, 5, 5, 9, 25]  # 1+2, +2, +0, +2*2, +(2*2)*4
    assert [(m.level, m.out_hw, len(m.layers)) for m in t.macroblocks] == \
        [(m.level, m.out_hw, len(m.layers)) for m in k.macroblocks]
    conv_macs = sum(c.flops for c in t.layers)
    assert t.shapes.flops == k.shapes.flops == conv_macs + 16 * 10
    assert np.isclose(t.L, k.L)
