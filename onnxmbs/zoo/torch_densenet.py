"""PyTorch DenseNet-BC-121 (Huang et al. 2017) with per-resolution β.

torchvision layout: conv0 7x7/2 (64) + BN + ReLU, max-pool 3x3/2, four dense
blocks of (6, 12, 24, 16) layers at L/4 ... L/32 — each layer is BN-ReLU-1x1
conv (``4k`` channels) - BN-ReLU-3x3 conv (``k`` channels, the growth rate
k = 32) whose output is concatenated to its input — with transitions
BN-ReLU-1x1 conv (half the channels) - 2x2/2 average pool between blocks, a
final BN + ReLU, global average pooling and a linear classifier.
7,978,856 parameters at default.

The configuration is one β per dense block, ``[β_1, β_2, β_3, β_4]`` (the
paper's form; blocks at L/4, L/8, L/16, L/32).  β_b scales every channel that
*lives at block b's resolution*: the block's growth rate ``k_b = ceil(β_b · 32)``
and bottleneck width ``4 · k_b``, and the channels that enter the block — the
stem conv (``ceil(β_1 · 64)``, it reaches block 1 through the max-pool) or the
transition before the block (``ceil(β_b · C)`` with torchvision's C = 128, 256,
512; the transition's output reaches block b through its average pool).  With
the paper's ``[1, 0.987, 0.832, 0.809]`` this gives 6,042,628 parameters —
the paper's 6.04 M (24.27 % reduction; paper 24.31 %).  (Scaling each conv by
the β of its own output resolution instead — transitions by the block before
them, bottlenecks by ``ceil(β·128)`` — gives 6.20 M.)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from onnxmbs.zoo.configuration import check_betas, scaled

GROWTH = 32
BN_SIZE = 4
STEM = 64
BLOCKS = (6, 12, 24, 16)


def _bn_relu_conv(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False)]


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, bottleneck: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_bn_relu_conv(c_in, bottleneck, 1), *_bn_relu_conv(bottleneck, growth, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.body(x)), 1)


class DenseNet(nn.Module):
    def __init__(self, betas: Sequence[float], num_classes: int, in_channels: int) -> None:
        super().__init__()
        c = scaled(betas[0], STEM)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        c_orig = STEM
        for b, n in enumerate(BLOCKS):
            growth = scaled(betas[b], GROWTH)
            layers += [DenseLayer(c + i * growth, BN_SIZE * growth, growth) for i in range(n)]
            c += n * growth
            c_orig += n * GROWTH
            if b < len(BLOCKS) - 1:
                c_orig //= 2
                out = scaled(betas[b + 1], c_orig)
                layers += [*_bn_relu_conv(c, out, 1), nn.AvgPool2d(2, 2)]
                c = out
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def densenet121(*, betas: Sequence[float] | None = None, num_classes: int = 1000, in_channels: int = 3) -> DenseNet:
    """DenseNet-BC-121 with one β per dense block."""
    return DenseNet(check_betas(betas, 4, "DenseNet-121", allow_short=False), num_classes, in_channels)
