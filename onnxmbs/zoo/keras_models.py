"""Keras 3 builds of the zoo's CIFAR ResNets, MobileNetV1 and MobileNetV2 (NHWC).

Same configurations as the PyTorch builders (see ``torch_resnet`` and
``torch_mobilenet``), written with the Keras layers API.  The MobileNets follow
``keras.applications`` layer for layer — bias-free convs, BN (ε = 1e-3), ReLU6,
``padding="same"`` (for stride 2 this is exactly the applications' asymmetric
ZeroPadding2D + "valid") — so at default widths the parameter counts equal
``keras.applications.MobileNet`` (4,253,864) and ``MobileNetV2`` (3,538,984),
BatchNorm moving statistics included.  Differences from the applications: the
classifier is a ``Dense`` layer (MobileNet's 1x1 conv on a 1x1 map has the same
parameters) and the output is logits, no softmax, like the PyTorch models.

CIFAR ResNets mirror ``torch_resnet.cifar_resnet`` (1x1 conv + BN projection
shortcuts where the shape changes).  A Keras stride-2 "same" 3x3 conv pads
bottom/right only where PyTorch pads both sides; shapes are equal, values shift.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from onnxmbs.runtime.frameworks import import_keras

keras = import_keras()  # without TensorFlow's start-up noise
from keras import layers  # noqa: E402

from onnxmbs.errors import MBSError  # noqa: E402
from onnxmbs.zoo.configuration import (  # noqa: E402
    CIFAR_RESNET, MOBILENET_V1, check_betas, check_widths, mobilenet_v2_widths,
)

V1_BLOCKS = ((1, 1), (2, 2), (2, 1), (3, 2), (3, 1), (4, 2), (4, 1), (4, 1), (4, 1), (4, 1), (4, 1), (5, 2), (5, 1))
BN_EPS = 1e-3


def _input(input_size: int, in_channels: int, min_size: int) -> keras.KerasTensor:
    if input_size < min_size:
        raise MBSError(f"input size {input_size} is too small — use at least {min_size}")
    return keras.Input((input_size, input_size, in_channels), name="input")


def _conv_bn(x, filters: int, k: int, stride: int = 1, *, name: str, act: str | None = "relu6"):
    """Conv (no bias) + BN + ``act``: "relu6", "relu" or None (linear)."""
    x = layers.Conv2D(filters, k, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPS, name=f"{name}_bn")(x)
    if act is None:
        return x
    return layers.ReLU(6.0 if act == "relu6" else None, name=f"{name}_relu")(x)


def _dw_bn(x, stride: int, *, name: str):
    x = layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(epsilon=BN_EPS, name=f"{name}_dw_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_dw_relu")(x)


def _head(x, num_classes: int, *, dropout: float = 0.0):
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, name="logits")(x)


def mobilenet_v1(*, widths: Sequence[int] | None = None, num_classes: int = 1000, input_size: int = 224,
                 in_channels: int = 3) -> keras.Model:
    """MobileNetV1 with configuration ``[stem, p112, p56, p28, p14, p7]``."""
    w = check_widths(widths, MOBILENET_V1.default, "MobileNetV1")
    inputs = _input(input_size, in_channels, 32)
    x = _conv_bn(inputs, w[0], 3, 2, name="conv1")
    for i, (stage, stride) in enumerate(V1_BLOCKS, start=1):
        x = _dw_bn(x, stride, name=f"block{i}")
        x = _conv_bn(x, w[stage], 1, name=f"block{i}_pw")
    return keras.Model(inputs, _head(x, num_classes, dropout=1e-3), name="mobilenet_v1")


def mobilenet_v2(*, betas: Sequence[float] | None = None, num_classes: int = 1000, input_size: int = 224,
                 in_channels: int = 3) -> keras.Model:
    """MobileNetV2 with per-resolution β (5 values for L/2..L/32, or 4 for L/4..L/32)."""
    plan = mobilenet_v2_widths(check_betas(betas, 5, "MobileNetV2"))
    inputs = _input(input_size, in_channels, 32)
    x = _conv_bn(inputs, plan.stem, 3, 2, name="conv1")
    for i, b in enumerate(plan.blocks):
        y = _conv_bn(x, b.hidden, 1, name=f"block{i}_expand") if b.expand else x
        y = _dw_bn(y, b.stride, name=f"block{i}")
        y = _conv_bn(y, b.c_out, 1, name=f"block{i}_project", act=None)
        x = layers.Add(name=f"block{i}_add")([x, y]) if b.residual else y
    x = _conv_bn(x, plan.last, 1, name="last")
    return keras.Model(inputs, _head(x, num_classes), name="mobilenet_v2")


def _basic_block(x, c_in: int, width: int, stride: int, *, name: str):
    y = _conv_bn(x, width, 3, stride, name=f"{name}_1", act="relu")
    y = _conv_bn(y, width, 3, name=f"{name}_2", act=None)
    if stride != 1 or c_in != width:
        x = _conv_bn(x, width, 1, stride, name=f"{name}_proj", act=None)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, y]))


def cifar_resnet(depth: int = 20, *, widths: Sequence[int] | None = None, num_classes: int = 10,
                 input_size: int = 32, in_channels: int = 3) -> keras.Model:
    """CIFAR ResNet of depth ``6n+2`` with stage widths ``widths`` (default 16, 32, 64)."""
    if depth < 8 or (depth - 2) % 6:
        raise MBSError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202), got {depth} — pick one of those")
    w = check_widths(widths, CIFAR_RESNET.default, f"CIFAR ResNet-{depth}")
    inputs = _input(input_size, in_channels, 8)
    x = _conv_bn(inputs, w[0], 3, name="stem", act="relu")
    c = w[0]
    for s, width in enumerate(w):
        for i in range((depth - 2) // 6):
            x = _basic_block(x, c, width, 2 if s and not i else 1, name=f"stage{s + 1}_block{i}")
            c = width
    return keras.Model(inputs, _head(x, num_classes), name=f"resnet{depth}_cifar")


def count_params(model: keras.Model, *, trainable_only: bool = False) -> int:
    """Keras' own count (BN moving statistics included unless ``trainable_only``)."""
    weights = model.trainable_weights if trainable_only else model.weights
    return int(sum(math.prod(v.shape) for v in weights))
