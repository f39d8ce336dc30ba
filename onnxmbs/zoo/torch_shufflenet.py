"""PyTorch ShuffleNetV1 (Zhang et al. 2018), groups g = 3, with a stage-width configuration.

Layout as Megvii's reference ShuffleNetV1: a 3x3/2 stem conv (24) + BN + ReLU
and a 3x3/2 max-pool, three stages of (4, 8, 4) units at L/8, L/16, L/32,
global average pooling, a linear classifier.  A unit is a 1x1 group conv to
``out/4`` channels (not grouped in the very first unit, whose input is the
24-channel stem) + BN + ReLU, a channel shuffle, a 3x3 depthwise conv (stride 2
in the first unit of a stage) + BN, a 1x1 group conv + BN, then ReLU of
``x + branch`` (stride 1) or of ``concat(avgpool3x3/2(x), branch)`` where the
branch gives ``out - in`` channels (stride 2).  The channel shuffle is the usual
reshape (N, g, C/g, H, W) → transpose → reshape, which exports to ONNX
Reshape/Transpose/Reshape.

The configuration is the paper's ``[stem, stage2, stage3, stage4]`` (default
``[24, 240, 480, 960]``); every stage width must be divisible by 4·g = 12 (so the
bottleneck splits into g groups) and each stride-2 branch (``out - in``) by g.
Parameter count at default (1000 classes): 1,865,728 with bias-free convs.
``conv_bias=True`` gives every conv a bias as well (as the popular
jaxony/ShuffleNet PyTorch code does): 1,877,968, which is the paper's 1.88 M
(and 1,490,320 = 1.49 M for its ``[24, 240, 444, 792]``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from onnxmbs.errors import MBSError
from onnxmbs.zoo.configuration import check_widths

GROUPS = 3
WIDTHS = (24, 240, 480, 960)
REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, *, groups: int, first: bool, bias: bool) -> None:
        super().__init__()
        self.stride = stride
        mid = c_out // 4
        branch_out = c_out - c_in if stride == 2 else c_out
        self.groups = groups
        g1 = 1 if first else groups
        self.reduce = nn.Sequential(nn.Conv2d(c_in, mid, 1, groups=g1, bias=bias), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=bias), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, branch_out, 1, groups=groups, bias=bias), nn.BatchNorm2d(branch_out))
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.groups)))
        if self.shortcut is None:
            return self.relu(x + branch)
        return self.relu(torch.cat((self.shortcut(x), branch), 1))


class ShuffleNetV1(nn.Module):
    def __init__(self, widths: Sequence[int], num_classes: int, in_channels: int, *, bias: bool, groups: int = GROUPS) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=bias), nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        )
        units: list[nn.Module] = []
        c = widths[0]
        for stage, (width, repeats) in enumerate(zip(widths[1:], REPEATS)):
            for i in range(repeats):
                units.append(ShuffleUnit(c, width, 2 if i == 0 else 1, groups=groups,
                                         first=stage == 0 and i == 0, bias=bias))
                c = width
        self.stages = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _check_divisible(widths: list[int], groups: int) -> None:
    for prev, width in zip(widths, widths[1:]):
        if width % (4 * groups) or (width - prev) % groups or width <= prev:
            raise MBSError(
                f"ShuffleNet g={groups} stage widths must grow, be multiples of {4 * groups} and differ "
                f"from the previous stage by a multiple of {groups}; got {widths} — round each width "
                f"to a multiple of {4 * groups}"
            )


def shufflenet_v1(
    *, widths: Sequence[int] | None = None, num_classes: int = 1000, in_channels: int = 3, conv_bias: bool = False
) -> ShuffleNetV1:
    """ShuffleNetV1 g=3 with configuration ``[stem, stage2, stage3, stage4]``."""
    w = check_widths(widths, WIDTHS, "ShuffleNetV1")
    _check_divisible(w, GROUPS)
    return ShuffleNetV1(w, num_classes, in_channels, bias=conv_bias)
