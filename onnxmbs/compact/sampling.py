"""Reconstruction, part 2 — sampled rows of a layer's linear system, one batch at a time.

A Conv is linear in its weights: each output position is ``W · patch + b``, where the
patch is the input window that position reads (im2col). Only a sample of output positions
per image is used (``positions``, drawn without replacement and seeded), so the rows a
batch contributes — and the memory of the normal equations built from them — do not depend
on the image size or on the number of images. Gemm/MatMul rows are the input's feature
vectors (one per image for a classifier; a sample of the leading positions otherwise).

Same seed, same positions: the compact model's input and the original model's output are
sampled at the same places, so each row pairs a compact input with its original target.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.graph.proto import attr


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    group: int


def _same_pads(size: int, out: int, k: int, s: int, d: int, upper: bool) -> tuple[int, int]:
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def conv_geometry(node, in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int]) -> ConvGeometry:
    """Kernel, strides, dilations and explicit pads of a 2-D Conv (auto_pad resolved)."""
    stride = tuple(int(v) for v in attr(node, "strides", [1, 1]))
    dilation = tuple(int(v) for v in attr(node, "dilations", [1, 1]))
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        (t, b), (l, r) = (_same_pads(in_hw[i], out_hw[i], kernel[i], stride[i], dilation[i], auto == "SAME_UPPER")
                          for i in (0, 1))
        pads = (t, l, b, r)
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(int(v) for v in attr(node, "pads", [0, 0, 0, 0]))
    if len(stride) != 2 or len(dilation) != 2 or len(pads) != 4:
        raise MBSError(f"Conv '{node.name}' is not 2-D — only 2-D convolutions are reconstructed")
    return ConvGeometry(kernel=kernel, stride=stride, dilation=dilation, pads=pads, group=int(attr(node, "group", 1)))


@dataclass(frozen=True)
class Positions:
    """Sampled rows: image index and output coordinates (conv) or flat leading index (matmul)."""
    image: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


def sample_positions(rng: np.random.Generator, images: int, height: int, width: int, per_image: int) -> Positions:
    """``per_image`` distinct output positions of each image (all of them when there are fewer)."""
    cells = height * width
    if cells <= per_image:
        flat = np.tile(np.arange(cells), images)
    else:
        flat = np.concatenate([rng.choice(cells, per_image, replace=False) for _ in range(images)])
    image = np.repeat(np.arange(images), min(cells, per_image))
    return Positions(image=image, a=flat // width, b=flat % width)


def conv_rows(x: np.ndarray, geom: ConvGeometry, where: Positions) -> np.ndarray:
    """(rows, C, kh, kw) input windows of the sampled output positions of a Conv reading ``x`` (NCHW).

    Gathered straight from ``x`` (no padded copy of the tensor): taps that fall in the padding read
    a clipped position and are zeroed."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    top, left = geom.pads[0], geom.pads[1]
    rows = where.a[:, None] * sh + np.arange(kh)[None, :] * dh - top  # (rows, kh)
    cols = where.b[:, None] * sw + np.arange(kw)[None, :] * dw - left  # (rows, kw)
    flat = np.clip(rows, 0, h - 1)[:, :, None] * w + np.clip(cols, 0, w - 1)[:, None, :]
    out = x.reshape(n, c, h * w)[where.image[:, None, None], :, flat]  # (rows, kh, kw, C)
    if any(geom.pads):
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        out *= inside[..., None]
    return out.transpose(0, 3, 1, 2)


def conv_targets(y: np.ndarray, where: Positions) -> np.ndarray:
    """(rows, C) values of an NCHW tensor at the sampled positions."""
    return y[where.image, :, where.a, where.b]


def flat_rows(x: np.ndarray) -> np.ndarray:
    """(n, ..., K) -> (n, m, K): the leading positions of each image as rows of features."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def sample_flat(rng: np.random.Generator, images: int, per_image_rows: int, per_image: int) -> Positions:
    where = sample_positions(rng, images, 1, per_image_rows, per_image)
    return Positions(image=where.image, a=where.b, b=where.b)


def matmul_rows(x: np.ndarray, where: Positions) -> np.ndarray:
    """(rows, K) sampled feature rows of a Gemm/MatMul input."""
    return flat_rows(x)[where.image, where.a]
