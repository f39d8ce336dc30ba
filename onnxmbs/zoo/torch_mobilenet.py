"""PyTorch MobileNetV1 and MobileNetV2 with MBS width configurations.

**MobileNetV1** (Howard et al. 2017; Keras/TF-slim layout): a 3x3/2 stem conv,
13 depthwise-separable blocks (3x3 depthwise + BN + ReLU, 1x1 pointwise + BN +
ReLU), global average pooling and a linear classifier.  The configuration is
``[stem, p112, p56, p28, p14, p7]`` (default ``[32, 64, 128, 256, 512, 1024]``):
the stem width, then the pointwise output width for each output resolution
(named for a 224 input; at input size L they are L/2 ... L/32).  Depthwise convs
follow their input, so a stride-2 depthwise conv keeps the previous
resolution's width.  ReLU (not ReLU6) as in the paper's PyTorch setting; the
count is the same.  At the default widths the trainable parameter count is
4,231,976 (keras.applications.MobileNet: 4,253,864 including BN moving stats).

**MobileNetV2** (Sandler et al. 2018; torchvision layout, ReLU6, 3,504,872
parameters at default).  The configuration is a list of β, one per output
resolution: 5 entries ``[β_112, β_56, β_28, β_14, β_7]`` or 4 entries
``[β_56, β_28, β_14, β_7]`` with the L/2 stage (stem and first block) kept at 1
(the paper's 4-entry form, like DenseNet's one β per dense block).  β is applied
per conv, the way MBS scales a macroblock: every non-depthwise conv whose
output has resolution r gets ``ceil(β_r * C_out)`` channels — block projections
(and so the whole residual stage), the stem, the final 1x1 conv (1280, at L/32)
and the expansion convs.  An expansion conv runs at its block's *input*
resolution, so in a stride-2 block it takes the previous resolution's β and the
depthwise conv follows it.  The classifier keeps its outputs.  This is what the
MBS planner does to the ONNX graph (docs/algorithm.md: a conv in m_i gets ``ceil(β_i·C_out)``;
depthwise convs follow their input).  With the paper's ``[1, 1, 0.9447, 0.7978]``:
3,504,872 → 2,626,940 parameters (−25.05 %; the paper claims −25.03 %).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from onnxmbs.zoo.configuration import InvertedResidualWidths, check_betas, check_widths, mobilenet_v2_widths

V1_WIDTHS = (32, 64, 128, 256, 512, 1024)
# (output-resolution index into the configuration, stride) of each separable block
V1_BLOCKS = ((1, 1), (2, 2), (2, 1), (3, 2), (3, 1), (4, 2), (4, 1), (4, 1), (4, 1), (4, 1), (4, 1), (5, 2), (5, 1))


def _cbr(c_in: int, c_out: int, k: int, stride: int, *, groups: int = 1, act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class MobileNetV1(nn.Module):
    def __init__(self, widths: Sequence[int], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers = [_cbr(in_channels, widths[0], 3, 2)]
        c = widths[0]
        for stage, stride in V1_BLOCKS:
            layers += [_cbr(c, c, 3, stride, groups=c), _cbr(c, widths[stage], 1, 1)]
            c = widths[stage]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v1(*, widths: Sequence[int] | None = None, num_classes: int = 1000, in_channels: int = 3) -> MobileNetV1:
    """MobileNetV1 with configuration ``[stem, p112, p56, p28, p14, p7]``."""
    return MobileNetV1(check_widths(widths, V1_WIDTHS, "MobileNetV1"), num_classes, in_channels)


class InvertedResidual(nn.Module):
    def __init__(self, w: InvertedResidualWidths) -> None:
        super().__init__()
        layers = [_cbr(w.c_in, w.hidden, 1, 1, act=nn.ReLU6)] if w.expand else []
        layers += [_cbr(w.hidden, w.hidden, 3, w.stride, groups=w.hidden, act=nn.ReLU6),
                   _cbr(w.hidden, w.c_out, 1, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.residual = w.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, betas: Sequence[float], num_classes: int, in_channels: int) -> None:
        super().__init__()
        plan = mobilenet_v2_widths(betas)
        layers: list[nn.Module] = [_cbr(in_channels, plan.stem, 3, 2, act=nn.ReLU6)]
        layers += [InvertedResidual(b) for b in plan.blocks]
        last = plan.last
        layers.append(_cbr(plan.blocks[-1].c_out, last, 1, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2(*, betas: Sequence[float] | None = None, num_classes: int = 1000, in_channels: int = 3) -> MobileNetV2:
    """MobileNetV2 with per-resolution β (5 values for L/2..L/32, or 4 for L/4..L/32)."""
    return MobileNetV2(check_betas(betas, 5, "MobileNetV2"), num_classes, in_channels)
