"""Calibration data for the statistics pass: image folders, .npy/.npz files, arrays, iterables
or synthetic noise, as float32 batches in the model's layout. Everything streams: files are
read one at a time, .npy is memory-mapped and .npz members are read row chunk by row chunk.
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from onnxmbs.errors import MBSError
from onnxmbs.data.normalisation import PRESETS, Normalisation, Preprocess, make_preprocess, resolve_normalisation
from onnxmbs.data.sources import (ArraySource, NpzSource, Order, Source, Target, inspect_array, load_npy,
                                   warn_if_raw_floats)

logger = logging.getLogger(__name__)

__all__ = ["PRESETS", "Calibration", "CalibrationInfo", "Order", "Preprocess", "make_preprocess", "open_calibration"]

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
LAYOUTS = ("NCHW", "NHWC")
_EXT_TEXT = "/".join(IMAGE_EXTENSIONS) + " (any case)"
#: what PIL raises on a file that is not a readable image
PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class CalibrationInfo:
    """What a calibration pass read: its source, images delivered and files skipped."""
    source: str
    images: int
    skipped: int
    synthetic: bool
    preprocess: str | None = None  # the normalisation used for images/uint8 arrays
    normalisation: Normalisation | None = None  # how it was decided (None: a Preprocess given by the caller)


class Calibration:
    """Calibration data opened for a model input; iterate `batches()` (or the object)."""

    def __init__(self, source: Source, target: Target, *, batch_size: int,
                 max_images: int | None, synthetic: bool, normalisation: Normalisation | None = None) -> None:
        self._source, self._target = source, target
        self._batch_size, self._max_images = batch_size, max_images
        self._synthetic = synthetic
        self._images = 0
        self.normalisation = normalisation  # how the preprocess was decided, when it was

    @property
    def total(self) -> int | None:
        """Images a pass will deliver when known up front (folders: at most), else None."""
        total = self._source.total
        if total is None or self._max_images is None:
            return total
        return min(total, self._max_images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image in the model's layout, e.g. (3, 32, 32) for NCHW."""
        return self._target.image_shape

    @property
    def info(self) -> CalibrationInfo:
        """Source description and counts; the counts are final once a pass has finished."""
        return CalibrationInfo(self._source.label, self._images, self._source.skipped, self._synthetic,
                               self._target.preprocess.name, self.normalisation)

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("the number of images of a calibration iterable is unknown up front")
        return self.total

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches()

    def batches(self) -> Iterator[np.ndarray]:
        """float32 batches (b <= batch_size, *image_shape) in the model layout, streamed."""
        self._images = 0
        chunks = self._source.chunks(self._target, self._batch_size)
        try:
            for batch in _rebatch(chunks, self._batch_size, self._max_images):
                self._images += len(batch)
                yield batch
        finally:
            chunks.close()
        self._finish()

    def _finish(self) -> None:
        src = self._source
        if self._images == 0 and src.skipped:
            raise MBSError(f"none of the {src.skipped} image files of {src.label} could be read "
                           f"(first: {src.first_error}) — check they are valid images")
        if self._images == 0:
            raise MBSError(f"{src.label} yielded no images — pass a non-empty list of arrays or a fresh "
                           "generator (a generator can be read only once)")
        if src.skipped:
            logger.warning("skipped %d unreadable image file(s) of %s (first: %s)",
                           src.skipped, src.label, src.first_error)


def _rebatch(chunks: Iterator[np.ndarray], batch_size: int, limit: int | None) -> Iterator[np.ndarray]:
    """Re-cut a stream of row chunks into batches of ``batch_size`` rows, at most ``limit`` rows."""
    buf: list[np.ndarray] = []
    have = delivered = 0
    for chunk in chunks:
        if limit is not None:
            chunk = chunk[: limit - delivered - have]
        buf.append(chunk)
        have += len(chunk)
        while have >= batch_size:
            data = np.concatenate(buf) if len(buf) > 1 else buf[0]
            yield data[:batch_size]
            delivered += batch_size
            rest = data[batch_size:]
            buf, have = ([rest] if len(rest) else []), len(rest)
        if limit is not None and delivered + have >= limit:
            break
    if have:
        yield np.concatenate(buf) if len(buf) > 1 else buf[0]


class _ImageFiles(Source):
    """Image files, read one at a time: resize the shorter side, centre crop, preprocess."""

    def __init__(self, files: list[Path], label: str) -> None:
        self.files, self.label, self.total = files, label, len(files)

    def select(self, indices: np.ndarray) -> Source:
        return _ImageFiles([self.files[i] for i in indices], self.label)

    def chunks(self, target: Target, batch_size: int) -> Iterator[np.ndarray]:
        self.skipped, self.first_error = 0, ""
        for path in self.files:
            try:
                pixels = _load_image(path, target)
            except PIL_ERRORS as exc:
                self.skipped += 1
                self.first_error = self.first_error or f"{path.name}: {exc}"
                continue
            yield target.from_pixels(pixels[None])


def _load_image(path: Path, target: Target) -> np.ndarray:
    """One image file -> (H, W, C) uint8, shorter side resized to fit, centre-cropped."""
    height, width = target.height, target.width
    with Image.open(path) as img:
        img = img.convert("L" if target.channels == 1 else "RGB")
        w, h = img.size
        s = max(width / w, height / h)
        nw, nh = max(width, round(w * s)), max(height, round(h * s))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - width) // 2, (nh - height) // 2
        pixels = np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.uint8)
    return pixels.reshape(height, width, target.channels)


class _IterableArrays(Source):
    """A Python iterable of arrays, each one image or a batch; (x, label) pairs use x."""
    label = "python iterable"
    random_access = False

    def __init__(self, data: Iterable) -> None:
        self.data = data

    def chunks(self, target: Target, batch_size: int) -> Iterator[np.ndarray]:
        for i, item in enumerate(self.data):
            if isinstance(item, (tuple, list)) and item:
                item = item[0]
            arr = np.asarray(item)
            what = f"item {i} of the calibration iterable"
            layout, shape = inspect_array(arr.shape, arr.dtype, what, target)
            if i == 0:
                warn_if_raw_floats(arr, what)
            yield target.from_array(arr.reshape(shape), layout, what)


class _Noise(Source):
    """Uniform random 0..255 pixels put through the preprocess; image i is seeded by (seed, i)."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed, self.total = count, seed, count
        self.label = f"synthetic noise ({count} images, seed {seed})"
        self.rows = np.arange(count)

    def select(self, indices: np.ndarray) -> Source:
        chosen = copy.copy(self)
        chosen.rows, chosen.total = self.rows[indices], len(indices)
        return chosen

    def chunks(self, target: Target, batch_size: int) -> Iterator[np.ndarray]:
        hwc = (target.height, target.width, target.channels)
        for start in range(0, self.total, batch_size):
            pixels = np.stack([np.random.default_rng([self.seed, int(i)]).integers(0, 256, hwc, dtype=np.uint8)
                               for i in self.rows[start:start + batch_size]])
            yield target.from_pixels(pixels)


def _make_target(shape: Sequence[int], layout: str, preprocess: Preprocess | Normalisation | None) -> Target:
    lay = str(layout).upper()
    if lay not in LAYOUTS:
        raise MBSError(f"unknown input layout {layout!r} — use 'NCHW' or 'NHWC'")
    dims = tuple(shape)
    if len(dims) != 4:
        raise MBSError(f"model input shape {dims} is not 4-D — calibration data is for image inputs shaped "
                       "(N, C, H, W) or (N, H, W, C)")
    c, h, w = (dims[1], dims[2], dims[3]) if lay == "NCHW" else (dims[3], dims[1], dims[2])
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in (c, h, w)):
        raise MBSError(f"model input shape {dims} has a dynamic or invalid channel/height/width — give it "
                       "a fixed size, e.g. --input-shape 1,3,224,224")
    if preprocess is None:  # an API caller without a model: the one rule's default
        preprocess = resolve_normalisation({}, announce=False)
    pre = preprocess.preprocess if isinstance(preprocess, Normalisation) else preprocess
    pre.vectors(int(c))  # fails early if the mean/std do not fit the channel count
    if int(c) == 1 and max(len(pre.mean), len(pre.std)) > 1:
        logger.info("1-channel model: using the average of the %r mean/std values", pre.name)
    return Target(lay, int(c), int(h), int(w), pre)


def _check_counts(batch_size: int, max_images: int | None, synthetic: int | None, seed: int) -> None:
    for name, value in (("batch_size", batch_size), ("max_images", max_images), ("synthetic", synthetic)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise MBSError(f"{name} must be a whole number >= 1, got {value!r} — pass a positive count")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MBSError(f"seed must be a whole number >= 0, got {seed!r} — pass e.g. seed=0")


def _open_path(path: Path, target: Target) -> Source:
    if not path.exists():
        raise MBSError(f"calibration data not found: {path} — check the path (image folder, image, .npy or .npz)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return ArraySource(load_npy(path), f"npy file {path}", target)
    if suffix == ".npz":
        return NpzSource(path, target)
    if path.is_file() and suffix not in IMAGE_EXTENSIONS:
        raise MBSError(f"unsupported calibration file {path.name} — pass an image folder, an image "
                       f"({_EXT_TEXT}), a .npy or a .npz file")
    if target.channels not in (1, 3):
        raise MBSError(f"images can feed only 1- or 3-channel models, this one has {target.channels} — "
                       "pass the data as a .npy/.npz array instead")
    if path.is_file():
        return _ImageFiles([path], f"image file {path}")
    files = find_images(path)
    if not files:
        raise MBSError(f"no image files ({_EXT_TEXT}) found under {path}, searched recursively — point "
                       "at a folder of images, or at a .npy/.npz array file")
    return _ImageFiles(files, f"image folder {path} ({len(files)} images)")


def find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders are ignored."""
    found = sorted((p.relative_to(root).parts, p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return [p for parts, p in found if not any(part.startswith(".") for part in parts) and p.is_file()]


def open_calibration(data, *, shape: Sequence[int], layout: str, preprocess: Preprocess | Normalisation | None = None,
                     synthetic: int | None = None, max_images: int | None = None,
                     batch_size: int = 32, seed: int = 0, order: Order | None = None) -> Calibration:
    """Open calibration data for a model input of ``shape`` (batch first) in ``layout``.

    ``data``: an image folder or file, a .npy/.npz file, a numpy array, or an iterable of
    arrays (single images or batches); or None with ``synthetic=N`` for N noise images.
    ``preprocess``: a :class:`Normalisation` decided by ``resolve_normalisation`` (recorded in
    ``info``), or an explicit :class:`Preprocess`; None is the "imagenet" preset (API callers
    without a model). Float arrays skip it.
    """
    target = _make_target(shape, layout, preprocess)
    _check_counts(batch_size, max_images, synthetic, seed)
    if data is not None and synthetic is not None:
        raise MBSError("got both calibration data and synthetic noise — choose one: real data (--data PATH) "
                       "or random noise (--synthetic N)")
    if data is None and synthetic is None:
        raise MBSError("no calibration data: pass --data PATH (image folder, .npy/.npz) or --synthetic N "
                       "for random noise")
    if data is None:
        source: Source = _Noise(int(synthetic), int(seed))
    elif isinstance(data, (str, os.PathLike)):
        source = _open_path(Path(data), target)
    elif isinstance(data, np.ndarray):
        source = ArraySource(data, "numpy array", target)
    elif isinstance(data, Iterable):
        source = _IterableArrays(data)
    else:
        raise MBSError(f"cannot use a {type(data).__name__} as calibration data — pass a path,"
                       " a numpy array or an iterable of arrays")
    logger.debug("calibration: %s -> %s %s", source.label, target.layout, target.image_shape)
    if order is not None and order != Order():
        source, max_images = _ordered(source, order, max_images, int(batch_size))
    return Calibration(source, target, batch_size=int(batch_size), max_images=max_images, synthetic=data is None,
                       normalisation=preprocess if isinstance(preprocess, Normalisation) else None)


def _ordered(source: Source, order: Order, max_images: int | None, batch_size: int) -> tuple[Source, int | None]:
    """``source`` restricted and reordered by ``order``; a stream source keeps its file order."""
    if order.shuffle is not None and not source.random_access:
        logger.warning("%s is read as a stream, in file order (not shuffled): make sure its order is random",
                       source.label)
        order = Order(rows=order.rows, shard=order.shard)
    if order == Order():
        return source, max_images
    if source.total is None:
        raise MBSError(f"{source.label} has no known size and cannot be split into shards — pass a path "
                       "(image folder, .npy, .npz) or a numpy array")
    return source.select(order.indices(source.total, max_images, batch_size)), None
