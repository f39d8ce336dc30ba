"""Where calibration images come from: the model input they must fit (:class:`Target`), the
base of every data source (:class:`Source`), which rows a pass reads (:class:`Order`: shuffle,
shards) and the array-file sources (numpy arrays and memory-mapped .npy; .npz read as a stream).
"""
from __future__ import annotations

import copy
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.data.normalisation import Preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Order:
    """Which images a pass reads, in which order (everything is exact: a shard is a set of rows).

    ``shuffle``: a seed for a fixed pseudo-random permutation of the images (else file order);
    then ``--max-images`` keeps the first N; then ``rows`` = [start, stop) of those, or
    ``shard`` = (i, n): the i-th of n parts, cut between whole batches of ``batch_size`` so that
    the shards together run exactly the batches of the whole pass.
    """
    shuffle: int | None = None
    rows: tuple[int, int] | None = None
    shard: tuple[int, int] | None = None

    def indices(self, total: int, max_images: int | None, batch_size: int = 1) -> np.ndarray:
        idx = np.random.default_rng(self.shuffle).permutation(total) if self.shuffle is not None else np.arange(total)
        idx = idx[:max_images]
        if self.shard is not None:
            return idx[slice(*shard_rows(len(idx), *self.shard, batch_size=batch_size))]
        return idx[slice(*self.rows)] if self.rows is not None else idx


def shard_rows(total: int, index: int, count: int, *, batch_size: int = 1) -> tuple[int, int]:
    """Rows [start, stop) of shard ``index`` of ``count`` over ``total`` rows, cut between whole batches."""
    batches = -(-total // batch_size)
    return (min(index * batches // count * batch_size, total),
            min((index + 1) * batches // count * batch_size, total))


@dataclass(frozen=True)
class Target:
    """The model input one image must become, and how pixels get there."""
    layout: str
    channels: int
    height: int
    width: int
    preprocess: Preprocess

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.channels, self.height, self.width
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, H, W, C) 0..255 RGB pixels -> preprocessed float32 batch in model layout."""
        x = self.preprocess.apply(pixels)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if self.layout == "NCHW" else x)

    def from_array(self, arr: np.ndarray, src: str, what: str = "the data") -> np.ndarray:
        """A batch in layout ``src`` (NCHW/NHWC/NHW) -> float32 batch in model layout; NaN or infinite values
        are the data's fault (every command reads arrays through here)."""
        if src == "NHW":
            arr, src = arr[..., None], "NHWC"
        if arr.dtype == np.uint8:
            return self.from_pixels(arr if src == "NHWC" else arr.transpose(0, 2, 3, 1))
        if src != self.layout:
            arr = arr.transpose(0, 3, 1, 2) if src == "NHWC" else arr.transpose(0, 2, 3, 1)
        out = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(out).all():
            bad = int(np.count_nonzero(~np.isfinite(out).reshape(len(out), -1).all(axis=1)))
            raise MBSError(f"{what} holds NaN or infinite values ({bad} of the {len(out)} images of one batch) — "
                           "clean or drop those images")
        return out


class Source:
    """Base of the data sources: a label, a known size or None, and a skip counter."""
    label = "calibration data"
    total: int | None = None
    skipped = 0
    first_error = ""
    random_access = True  # False: read as a stream, in file order only

    def select(self, indices: np.ndarray) -> "Source":
        """The same source restricted to ``indices``, read in that order."""
        raise MBSError(f"{self.label} cannot be split or reordered — pass a path (image folder, .npy, .npz)")

    def chunks(self, target: Target, batch_size: int) -> Iterator[np.ndarray]:
        raise NotImplementedError


def _array_layout(shape: tuple[int, ...], target: Target, what: str) -> tuple[str, bool]:
    """Which layout an array has (NCHW, NHWC or NHW for 1-channel) and whether it is a batch."""
    c, h, w = target.channels, target.height, target.width
    if len(shape) not in (3, 4):
        raise MBSError(f"{what} has rank {len(shape)} (shape {tuple(shape)}); expected one image (CHW/HWC) "
                       "or a batch (NCHW/NHWC) — add or remove axes to match")
    item = tuple(shape[1:]) if len(shape) == 4 else tuple(shape)
    matches = [lay for lay, s in (("NCHW", (c, h, w)), ("NHWC", (h, w, c))) if item == s]
    if not matches and len(shape) == 3 and c == 1 and tuple(shape[1:]) == (h, w):
        return "NHW", True
    if not matches:
        raise MBSError(f"model expects {target.image_shape} {target.layout}, got {what} of shape {tuple(shape)} "
                       f"— resize to {h}x{w} with {c} channel(s), or pass an image folder to have it resized")
    return (target.layout if target.layout in matches else matches[0]), len(shape) == 4


def inspect_array(shape: tuple[int, ...], dtype: np.dtype, what: str, target: Target) -> tuple[str, tuple]:
    """Check an array's dtype and shape; return its layout and its shape as a batch."""
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise MBSError(f"{what} has dtype {dtype}; expected uint8 pixels (0..255, preprocessed here) or "
                       "float (already preprocessed) — convert with .astype()")
    layout, batched = _array_layout(shape, target, what)
    shape = tuple(shape) if batched else (1, *shape)
    if shape[0] == 0:
        raise MBSError(f"{what} holds 0 images — give it at least one image")
    return layout, shape


def warn_if_raw_floats(chunk: np.ndarray, what: str) -> None:
    if np.issubdtype(chunk.dtype, np.floating) and chunk.size and chunk.min() >= 0 and chunk.max() > 2:
        logger.warning("%s holds float values up to %.0f that look like raw 0..255 pixels; float arrays "
                       "are used as-is — save uint8 pixels to have them preprocessed", what, float(chunk.max()))


class ArraySource(Source):
    """A numpy array (possibly memory-mapped) of one image or a batch, sliced into chunks."""

    def __init__(self, arr: np.ndarray, label: str, target: Target) -> None:
        self.layout, shape = inspect_array(arr.shape, arr.dtype, label, target)
        self.arr, self.total = arr.reshape(shape), shape[0]
        self.label = f"{label} ({self.total} images, {self.layout})"
        self.rows: np.ndarray | None = None

    def select(self, indices: np.ndarray) -> Source:
        chosen = copy.copy(self)
        chosen.rows, chosen.total = np.asarray(indices), len(indices)
        return chosen

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self.rows is None:
            return np.asarray(self.arr[start:stop])
        rows = self.rows[start:stop]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            return np.asarray(self.arr[rows[0]:rows[-1] + 1])  # a contiguous run: one slice
        return np.asarray(self.arr[np.sort(rows)])[np.argsort(np.argsort(rows))]  # rows in order, read ascending

    def chunks(self, target: Target, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.total, batch_size):
            chunk = self._read(start, start + batch_size)
            if start == 0:
                warn_if_raw_floats(chunk, self.label)
            yield target.from_array(chunk, self.layout, self.label)


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise MBSError(f"cannot read {path} as a numeric .npy array ({exc}) — save it with "
                       "np.save(path, images) from a uint8 or float array") from exc


class NpzSource(Source):
    """One array of a .npz file, read row chunk by row chunk straight from the zip member."""

    def __init__(self, path: Path, target: Target) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as zf:
                keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                self.key = pick_key(keys, path)
                with zf.open(self.key + ".npy") as f:
                    shape, self.fortran, self.dtype = read_npy_header(f)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise MBSError(f"cannot read {path} as a .npz file ({exc}) — save it with np.savez(path, x=images)") \
                from exc
        what = f"npz file {path} [{self.key!r}]"
        self.layout, self.shape = inspect_array(shape, self.dtype, what, target)
        self.total = self.shape[0]
        self.label = f"{what} ({self.total} images, {self.layout})"
        self.first = 0
        self.random_access = False

    def select(self, indices: np.ndarray) -> Source:
        if len(indices) and not (np.diff(indices) == 1).all():
            raise MBSError(f"{self.label} is read as a stream and cannot be reordered — save the images as "
                           ".npy (np.save) to read them in another order")
        chosen = copy.copy(self)
        chosen.first, chosen.total = (int(indices[0]) if len(indices) else 0), len(indices)
        return chosen

    def chunks(self, target: Target, batch_size: int) -> Iterator[np.ndarray]:
        if self.fortran:  # rare: Fortran-ordered members cannot be read row by row
            arr = np.load(self.path)[self.key][self.first:self.first + self.total]
            yield from ArraySource(arr, self.label, target).chunks(target, batch_size)
            return
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as f:
            read_npy_header(f)
            f.seek(f.tell() + self.first * row_bytes)  # a shard: skip the rows before it
            for start in range(0, self.total, batch_size):
                rows = min(batch_size, self.total - start)
                data = np.frombuffer(f.read(rows * row_bytes), dtype=self.dtype)
                chunk = data.reshape((rows, *self.shape[1:]))
                if start == 0:
                    warn_if_raw_floats(chunk, self.label)
                yield target.from_array(chunk, self.layout, self.label)


#: The ``.npz`` keys every command reads: images (calibration, labelled and training data alike)
#: and class labels, first match wins.
IMAGE_KEYS = ("images", "x", "data", "x_train")
LABEL_KEYS = ("labels", "y", "targets", "y_train")


def pick_key(keys: list[str], path: Path) -> str:
    """The array of an ``.npz`` holding the images: the first of :data:`IMAGE_KEYS`, or its only array."""
    for key in IMAGE_KEYS:
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise MBSError(f"{path} holds arrays {sorted(keys)} and none is named {'/'.join(IMAGE_KEYS)} — save the "
                   "images under the key 'images' (np.savez(path, images=..., labels=...))")


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the ``.npy`` stream ``f``, read without loading the array."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)
