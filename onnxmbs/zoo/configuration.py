"""Width configurations of the zoo models: what they mean, and how a plan sets them.

A zoo model's *configuration* is either a list of stage widths (ResNets,
MobileNetV1, ShuffleNet) or a list of per-resolution β (MobileNetV2,
DenseNet-121).  Each entry belongs to one output resolution ``L / 2**level``
(``level`` 0 is the input size).  ``configuration_from_plan`` turns an
``onnxmbs.plan/1`` JSON dict into a configuration the paper's way: the β of the
macroblock at a stage's resolution, applied as ``ceil(β × stage width)``
(ShuffleNet then rounds up to its group constraints).

This module imports neither torch nor keras; both builders use its helpers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxmbs.errors import MBSError

if TYPE_CHECKING:
    from onnxmbs.planning.document import PlanDocument




@dataclass(frozen=True)
class ConfigSpec:
    """What a model's configuration is: widths or β, their defaults and resolution levels."""

    kind: str  # "widths" | "betas"
    default: tuple[float, ...]
    levels: tuple[int, ...]  # entry i sits at output resolution L / 2**levels[i]
    multiple_of: tuple[int, ...] = ()  # per-entry rounding (ShuffleNet group constraints)


CIFAR_RESNET = ConfigSpec("widths", (16, 32, 64), (0, 1, 2))
IMAGENET_RESNET = ConfigSpec("widths", (64, 128, 256, 512), (2, 3, 4, 5))
MOBILENET_V1 = ConfigSpec("widths", (32, 64, 128, 256, 512, 1024), (1, 1, 2, 3, 4, 5))
MOBILENET_V2 = ConfigSpec("betas", (1.0, 1.0, 1.0, 1.0, 1.0), (1, 2, 3, 4, 5))
SHUFFLENET_G3 = ConfigSpec("widths", (24, 240, 480, 960), (1, 3, 4, 5), multiple_of=(3, 12, 12, 12))
DENSENET_121 = ConfigSpec("betas", (1.0, 1.0, 1.0, 1.0), (2, 3, 4, 5))

CONFIGS: dict[str, ConfigSpec] = {
    **{f"resnet{d}": CIFAR_RESNET for d in (20, 32, 44, 56, 110, 1202)},
    **{f"resnet{d}": IMAGENET_RESNET for d in (18, 34, 50, 101, 152)},
    "mobilenet_v1": MOBILENET_V1,
    "mobilenet_v2": MOBILENET_V2,
    "shufflenet_v1_g3": SHUFFLENET_G3,
    "densenet121": DENSENET_121,
}


def check_widths(widths: Sequence[int] | None, default: Sequence[int], what: str) -> list[int]:
    """Return ``widths`` (or ``default``) as a list of positive ints of the right length."""
    if widths is None:
        return [int(d) for d in default]
    try:
        out = [int(w) for w in widths]
        exact = all(float(w) == float(o) for w, o in zip(widths, out))
    except (TypeError, ValueError):
        out, exact = [], False
    if len(out) != len(default) or not exact or any(w <= 0 for w in out):
        raise MBSError(f"{what} needs {len(default)} positive integer widths, got {list(widths)} — "
                       f"pass e.g. {','.join(str(int(d)) for d in default)}")
    return out


def check_betas(betas: Sequence[float] | None, n: int, what: str, *, allow_short: bool = True) -> list[float]:
    """``n`` per-resolution β in (0, 1]; with ``allow_short`` a list of ``n - 1`` gets β = 1 prepended."""
    if betas is None:
        return [1.0] * n
    try:
        out = [float(b) for b in betas]
    except (TypeError, ValueError):
        out = []
    if allow_short and len(out) == n - 1:
        out = [1.0, *out]
    if len(out) != n or any(not 0.0 < b <= 1.0 for b in out):
        lengths = f"{n - 1} or {n}" if allow_short else str(n)
        raise MBSError(f"{what} needs {lengths} β values in (0, 1], got {list(betas)} — "
                       f"e.g. {','.join(['1'] * n)}")
    return out


def scaled(beta: float, channels: int, *, multiple_of: int = 1) -> int:
    """The paper's compact width ``ceil(β·C)``, rounded up to ``multiple_of`` — the planner's own rule."""
    from onnxmbs.planning.planner import compact_width

    return compact_width(channels, beta, multiple_of=multiple_of)


@dataclass(frozen=True)
class InvertedResidualWidths:
    c_in: int
    hidden: int
    c_out: int
    stride: int
    expand: bool
    residual: bool  # decided by the original architecture, never by coincidental scaled widths


@dataclass(frozen=True)
class MobileNetV2Widths:
    stem: int
    blocks: tuple[InvertedResidualWidths, ...]
    last: int


# torchvision / keras.applications inverted residual settings: expansion t, channels c, repeats n, stride s
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
V2_STEM = 32
V2_LAST = 1280


def mobilenet_v2_widths(betas: Sequence[float]) -> MobileNetV2Widths:
    """Per-conv widths of MobileNetV2 for 5 per-resolution β (L/2 .. L/32), see torch_mobilenet."""
    c_orig, c = V2_STEM, scaled(betas[0], V2_STEM)
    stem, blocks, level = c, [], 0
    for t, channels, n, first_stride in V2_SETTINGS:
        for i in range(n):
            stride = first_stride if i == 0 else 1
            hidden = c if t == 1 else scaled(betas[level], c_orig * t)  # expansion: input resolution
            level += stride == 2
            c_out = scaled(betas[level], channels)
            residual = stride == 1 and c_orig == channels
            blocks.append(InvertedResidualWidths(c, hidden, c_out, stride, t != 1, residual))
            c_orig, c = channels, c_out
    return MobileNetV2Widths(stem, tuple(blocks), scaled(betas[level], V2_LAST))


def _macroblock_betas(plan: PlanDocument) -> tuple[dict[int, float], int]:
    """β per resolution level (the largest where several macroblocks share one)."""
    L = plan.model.L  # noqa: N806
    betas: dict[int, float] = {}
    for mb in plan.macroblocks:
        level = round(math.log2(L / min(mb.out_hw)))
        betas[level] = max(betas.get(level, 0.0), mb.beta)
    return betas, L


def configuration_from_plan(name: str, plan: PlanDocument | Mapping[str, Any] | str | Path) -> list[int] | list[float]:
    """The zoo model ``name``'s configuration with each stage scaled by its macroblock's β."""
    if name not in CONFIGS:
        raise MBSError(f"unknown zoo model {name!r} — choose one of {', '.join(sorted(CONFIGS))}")
    spec = CONFIGS[name]
    from onnxmbs.planning.document import as_plan

    betas, L = _macroblock_betas(as_plan(plan))  # noqa: N806
    missing = sorted({lv for lv in spec.levels if lv not in betas})
    if missing:
        sizes = ", ".join(f"{L // 2**lv}px" for lv in missing)
        raise MBSError(f"the plan has no macroblock at {sizes} (L={L}) that {name} needs — "
                       f"was the plan made for a {name} model at this input size?")
    if spec.kind == "betas":
        return [betas[lv] for lv in spec.levels]
    rounding = spec.multiple_of or (1,) * len(spec.default)
    return [scaled(betas[lv], int(w), multiple_of=m) for lv, w, m in zip(spec.levels, spec.default, rounding)]
