"""Labelled training data for retraining: ``.npz`` arrays or image folders (one folder per class).

``.npz``: a 4-D image array (``x``/``images``/``data``, NCHW or NHWC; uint8 pixels are
preprocessed, float arrays are used as they are) and a 1-D label array (``y``/``labels``/
``targets``). Image folder: ``root/<class>/<image>``, classes in sorted order, images
resized to the model's input size and preprocessed like ``onnxmbs plan --preprocess``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from onnxmbs.data.calibration import IMAGE_EXTENSIONS, make_preprocess
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)

X_KEYS = ("x", "images", "data", "x_train")
Y_KEYS = ("y", "labels", "targets", "y_train")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray = field(repr=False)  # float32, in ``layout``
    y: np.ndarray = field(repr=False)  # int64 class indices
    layout: str
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes) or int(self.y.max()) + 1

    def take(self, index: np.ndarray) -> Dataset:
        return Dataset(self.x[index], self.y[index], self.layout, self.classes)

    def split(self, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(train, held out): a seeded, per-class split keeping ``fraction`` of each class out."""
        rng = np.random.default_rng(seed)
        per_class = [np.flatnonzero(self.y == c) for c in np.unique(self.y)]
        held = np.concatenate([rng.permutation(ids)[:max(1, round(fraction * len(ids)))] for ids in per_class])
        mask = np.zeros(len(self.y), bool)
        mask[held] = True
        return self.take(np.flatnonzero(~mask)), self.take(np.flatnonzero(mask))


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """(N, C, H, W) <-> (N, H, W, C), deciding the source layout by where the 1-4 channels are."""
    channels_first = x.shape[1] <= 4 < x.shape[-1] or (x.shape[1] <= 4 and x.shape[-1] == x.shape[-2])
    if (layout == "NCHW") == channels_first:
        return x
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x.transpose(0, 2, 3, 1))


def _pick(keys: list[str], wanted: tuple[str, ...], path: Path) -> str:
    hit = next((k for k in wanted if k in keys), None)
    if hit is None:
        raise MBSError(f"{path} has arrays {keys}, none named {'/'.join(wanted)} — save images as x and labels as y")
    return hit


def _from_npz(path: Path, layout: str, preprocess: str) -> Dataset:
    with np.load(path) as npz:
        keys = list(npz.keys())
        x, y = npz[_pick(keys, X_KEYS, path)], npz[_pick(keys, Y_KEYS, path)]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise MBSError(f"{path}: images must be 4-D and labels 1-D of the same length, got {x.shape} and {y.shape} "
                       "— save x as (N, C, H, W) or (N, H, W, C) and y as (N,)")
    if x.dtype == np.uint8:
        x = make_preprocess(preprocess).apply(to_layout(x, "NHWC"))
    return Dataset(to_layout(x.astype(np.float32), layout), y.astype(np.int64), layout)


def _read_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
            pixels = np.asarray(img, np.uint8)
    except (OSError, ValueError) as exc:
        raise MBSError(f"cannot read image {path} ({exc}) — remove or replace the file") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _from_folder(root: Path, layout: str, preprocess: str, size: tuple[int, int] | None, channels: int) -> Dataset:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
             if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise MBSError(f"no images in class folders under {root} — lay the data out as {root}/<class>/<image>.png")
    if size is None:
        with Image.open(files[0][0]) as first:
            size = (first.height, first.width)
    pixels = np.stack([_read_image(f, size, channels) for f, _ in files])
    x = make_preprocess(preprocess).apply(pixels).astype(np.float32)
    logger.info("read %d images of %d classes from %s", len(files), len(classes), root)
    return Dataset(to_layout(x, layout), np.array([i for _, i in files], np.int64), layout, tuple(classes))


def load_dataset(path: str | Path, *, layout: str = "NCHW", preprocess: str = "raw",
                 size: tuple[int, int] | None = None, channels: int = 3) -> Dataset:
    """Read ``path`` (a ``.npz`` file or a folder of class folders) as float32 images in ``layout``."""
    path = Path(path)
    if layout not in ("NCHW", "NHWC"):
        raise MBSError(f"unknown layout {layout!r} — use 'NCHW' (PyTorch) or 'NHWC' (Keras)")
    if path.suffix.lower() == ".npz" and path.is_file():
        return _from_npz(path, layout, preprocess)
    if path.is_dir():
        return _from_folder(path, layout, preprocess, size, channels)
    raise MBSError(f"training data not found or not supported: {path} — pass a .npz (x, y) or a folder of "
                   "class folders")
