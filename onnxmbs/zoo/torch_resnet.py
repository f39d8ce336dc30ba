"""PyTorch ResNets with a per-stage width configuration.

Two families:

* **CIFAR ResNets** (He et al. 2016, Sec. 4.2): depth ``6n+2`` (20, 32, 44, 56,
  110, 1202), a 3x3 stem conv, three stages of ``n`` basic blocks with default
  widths ``[16, 32, 64]`` at 32x32, 16x16 and 8x8, global average pooling and a
  linear classifier.  The configuration is ``[stage1, stage2, stage3]``; the stem
  takes the first stage's width.  Where a block changes shape (stride 2 or a
  different width) the shortcut is a 1x1 conv + BN projection (He's "option B"),
  as most PyTorch CIFAR ResNets do; identity shortcuts everywhere else.
* **ImageNet ResNets** in torchvision's layout: conv1 7x7/2 (no bias), BN, ReLU,
  max-pool 3x3/2, four stages, global average pooling, fc.  ResNet-18/34 use
  basic blocks, ResNet-50/101/152 bottleneck blocks.  The configuration is the
  per-stage *inner* width ``[64, 128, 256, 512]``; a bottleneck block outputs
  ``4 * w`` channels (the paper's convention).  The stem width is fixed at 64.

Each residual branch's last BatchNorm γ starts at zero, so untrained models of any depth are finite.
All convs are bias-free and followed by BatchNorm, so parameter counts equal
torchvision's at the default widths (ResNet-18 11,689,512; ResNet-50 25,557,032;
ResNet-101 44,549,160).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from onnxmbs.errors import MBSError
from onnxmbs.zoo.configuration import check_widths

CIFAR_WIDTHS = (16, 32, 64)
IMAGENET_WIDTHS = (64, 128, 256, 512)
IMAGENET_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN, residual add, ReLU; projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, width, 3, stride), nn.ReLU(inplace=True), *_conv_bn(width, width, 3)
        )
        self.shortcut = _shortcut(c_in, width, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision v1.5), 1x1 expand to ``4 * width``."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(c_in, width, 1), nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(width, c_out, 1),
        )
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


def _stage(block: type[nn.Module], c_in: int, width: int, n: int, stride: int) -> nn.Sequential:
    layers = [block(c_in, width, stride)]
    c_out = width * block.expansion
    layers += [block(c_out, width, 1) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """Stem, stages, global average pooling, linear classifier."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], features: int, num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(features, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def _init(model: nn.Module) -> None:
    """Kaiming-normal convs; the last BatchNorm γ of every residual branch starts at zero (Goyal et al. 2017),
    so each block starts as the identity and an untrained deep ResNet stays finite (ResNet-1202 gave NaN)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (BasicBlock, Bottleneck)):
            nn.init.zeros_(m.body[-1].weight)


def cifar_resnet(
    depth: int = 20, *, widths: Sequence[int] | None = None, num_classes: int = 10, in_channels: int = 3
) -> ResNet:
    """CIFAR ResNet of depth ``6n+2`` with stage widths ``widths`` (default 16, 32, 64)."""
    if depth < 8 or (depth - 2) % 6:
        raise MBSError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202), got {depth} — pick one of those")
    n = (depth - 2) // 6
    w = check_widths(widths, CIFAR_WIDTHS, f"CIFAR ResNet-{depth}")
    stem = nn.Sequential(*_conv_bn(in_channels, w[0], 3), nn.ReLU(inplace=True))
    stages, c_in = [], w[0]
    for i, width in enumerate(w):
        stages.append(_stage(BasicBlock, c_in, width, n, 1 if i == 0 else 2))
        c_in = width
    return ResNet(stem, stages, c_in, num_classes)


def imagenet_resnet(
    depth: int = 18, *, widths: Sequence[int] | None = None, num_classes: int = 1000, in_channels: int = 3
) -> ResNet:
    """torchvision-layout ResNet-18/34/50/101/152; ``widths`` are the inner stage widths."""
    if depth not in IMAGENET_BLOCKS:
        raise MBSError(f"ImageNet ResNet depth {depth} is unknown — use one of {sorted(IMAGENET_BLOCKS)}")
    kind, blocks = IMAGENET_BLOCKS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    w = check_widths(widths, IMAGENET_WIDTHS, f"ResNet-{depth}")
    stem = nn.Sequential(
        *_conv_bn(in_channels, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    )
    stages, c_in = [], 64
    for i, (width, n) in enumerate(zip(w, blocks)):
        stages.append(_stage(block, c_in, width, n, 1 if i == 0 else 2))
        c_in = width * block.expansion
    return ResNet(stem, stages, c_in, num_classes)


def _cifar(depth: int) -> Callable[..., ResNet]:
    def build(*, widths: Sequence[int] | None = None, num_classes: int = 10, in_channels: int = 3) -> ResNet:
        return cifar_resnet(depth, widths=widths, num_classes=num_classes, in_channels=in_channels)

    build.__name__ = f"resnet{depth}_cifar"
    build.__doc__ = f"CIFAR ResNet-{depth} (n={(depth - 2) // 6}), default widths {list(CIFAR_WIDTHS)}."
    return build


def _imagenet(depth: int) -> Callable[..., ResNet]:
    def build(*, widths: Sequence[int] | None = None, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
        return imagenet_resnet(depth, widths=widths, num_classes=num_classes, in_channels=in_channels)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ImageNet ResNet-{depth} ({IMAGENET_BLOCKS[depth][0]} blocks), default widths {list(IMAGENET_WIDTHS)}."
    return build


resnet20_cifar = _cifar(20)
resnet32_cifar = _cifar(32)
resnet44_cifar = _cifar(44)
resnet56_cifar = _cifar(56)
resnet110_cifar = _cifar(110)
resnet1202_cifar = _cifar(1202)
resnet18 = _imagenet(18)
resnet34 = _imagenet(34)
resnet50 = _imagenet(50)
resnet101 = _imagenet(101)
resnet152 = _imagenet(152)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running stats excluded, as torchvision counts)."""
    return sum(p.numel() for p in model.parameters())
