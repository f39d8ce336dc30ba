"""Calibration data for the statistics pass: image folders, .npy/.npz files, arrays, iterables
or synthetic noise, as float32 batches in the model's layout. Everything streams: files are
read one at a time, .npy is memory-mapped and .npz members are read row chunk by row chunk.
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from onnxmbs.errors import MBSError
from onnxmbs.stats.preprocess import PRESETS, Preprocess, make_preprocess

logger = logging.getLogger(__name__)

__all__ = ["PRESETS", "Calibration", "CalibrationInfo", "Preprocess", "make_preprocess", "open_calibration"]

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
LAYOUTS = ("NCHW", "NHWC")
_EXT_TEXT = "/".join(IMAGE_EXTENSIONS) + " (any case)"
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class CalibrationInfo:
    """What a calibration pass read: its source, images delivered and files skipped."""
    source: str
    images: int
    skipped: int
    synthetic: bool
    preprocess: str | None = None  # the normalisation used for images/uint8 arrays


@dataclass(frozen=True)
class _Target:
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

    def from_array(self, arr: np.ndarray, src: str) -> np.ndarray:
        """A batch in layout ``src`` (NCHW/NHWC/NHW) -> float32 batch in model layout."""
        if src == "NHW":
            arr, src = arr[..., None], "NHWC"
        if arr.dtype == np.uint8:
            return self.from_pixels(arr if src == "NHWC" else arr.transpose(0, 2, 3, 1))
        if src != self.layout:
            arr = arr.transpose(0, 3, 1, 2) if src == "NHWC" else arr.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(arr, dtype=np.float32)


class _Source:
    """Base of the data sources: a label, a known size or None, and a skip counter."""
    label = "calibration data"
    total: int | None = None
    skipped = 0
    first_error = ""

    def chunks(self, target: _Target, batch_size: int) -> Iterator[np.ndarray]:
        raise NotImplementedError


class Calibration:
    """Calibration data opened for a model input; iterate `batches()` (or the object)."""

    def __init__(self, source: _Source, target: _Target, *, batch_size: int,
                 max_images: int | None, synthetic: bool) -> None:
        self._source, self._target = source, target
        self._batch_size, self._max_images = batch_size, max_images
        self._synthetic = synthetic
        self._images = 0

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
                               self._target.preprocess.name)

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


class _ImageFiles(_Source):
    """Image files, read one at a time: resize the shorter side, centre crop, preprocess."""

    def __init__(self, files: list[Path], label: str) -> None:
        self.files, self.label, self.total = files, label, len(files)

    def chunks(self, target: _Target, batch_size: int) -> Iterator[np.ndarray]:
        self.skipped, self.first_error = 0, ""
        for path in self.files:
            try:
                pixels = _load_image(path, target)
            except _PIL_ERRORS as exc:
                self.skipped += 1
                self.first_error = self.first_error or f"{path.name}: {exc}"
                continue
            yield target.from_pixels(pixels[None])


def _load_image(path: Path, target: _Target) -> np.ndarray:
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


def _array_layout(shape: tuple[int, ...], target: _Target, what: str) -> tuple[str, bool]:
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


def _inspect(shape: tuple[int, ...], dtype: np.dtype, what: str, target: _Target) -> tuple[str, tuple]:
    """Check an array's dtype and shape; return its layout and its shape as a batch."""
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise MBSError(f"{what} has dtype {dtype}; expected uint8 pixels (0..255, preprocessed here) or "
                       "float (already preprocessed) — convert with .astype()")
    layout, batched = _array_layout(shape, target, what)
    shape = tuple(shape) if batched else (1, *shape)
    if shape[0] == 0:
        raise MBSError(f"{what} holds 0 images — give it at least one image")
    return layout, shape


def _warn_if_raw_floats(chunk: np.ndarray, what: str) -> None:
    if np.issubdtype(chunk.dtype, np.floating) and chunk.size and chunk.min() >= 0 and chunk.max() > 2:
        logger.warning("%s holds float values up to %.0f that look like raw 0..255 pixels; float arrays "
                       "are used as-is — save uint8 pixels to have them preprocessed", what, float(chunk.max()))


class _Arrays(_Source):
    """A numpy array (possibly memory-mapped) of one image or a batch, sliced into chunks."""

    def __init__(self, arr: np.ndarray, label: str, target: _Target) -> None:
        self.layout, shape = _inspect(arr.shape, arr.dtype, label, target)
        self.arr, self.total = arr.reshape(shape), shape[0]
        self.label = f"{label} ({self.total} images, {self.layout})"

    def chunks(self, target: _Target, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.total, batch_size):
            chunk = np.asarray(self.arr[start:start + batch_size])
            if start == 0:
                _warn_if_raw_floats(chunk, self.label)
            yield target.from_array(chunk, self.layout)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise MBSError(f"cannot read {path} as a numeric .npy array ({exc}) — save it with "
                       "np.save(path, images) from a uint8 or float array") from exc


class _NpzMember(_Source):
    """One array of a .npz file, read row chunk by row chunk straight from the zip member."""

    def __init__(self, path: Path, target: _Target) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as zf:
                keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                self.key = _pick_key(keys, path)
                with zf.open(self.key + ".npy") as f:
                    shape, self.fortran, self.dtype = _read_npy_header(f)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise MBSError(f"cannot read {path} as a .npz file ({exc}) — save it with np.savez(path, x=images)") \
                from exc
        what = f"npz file {path} [{self.key!r}]"
        self.layout, self.shape = _inspect(shape, self.dtype, what, target)
        self.total = self.shape[0]
        self.label = f"{what} ({self.total} images, {self.layout})"

    def chunks(self, target: _Target, batch_size: int) -> Iterator[np.ndarray]:
        if self.fortran:  # rare: Fortran-ordered members cannot be read row by row
            yield from _Arrays(np.load(self.path)[self.key], self.label, target).chunks(target, batch_size)
            return
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as f:
            _read_npy_header(f)
            for start in range(0, self.total, batch_size):
                rows = min(batch_size, self.total - start)
                data = np.frombuffer(f.read(rows * row_bytes), dtype=self.dtype)
                chunk = data.reshape((rows, *self.shape[1:]))
                if start == 0:
                    _warn_if_raw_floats(chunk, self.label)
                yield target.from_array(chunk, self.layout)


def _pick_key(keys: list[str], path: Path) -> str:
    for key in ("x", "images"):
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise MBSError(f"{path} holds arrays {sorted(keys)} and none is named 'x' or 'images' — save the "
                   "images under the key 'x' (np.savez(path, x=images))")


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class _IterableArrays(_Source):
    """A Python iterable of arrays, each one image or a batch; (x, label) pairs use x."""
    label = "python iterable"

    def __init__(self, data: Iterable) -> None:
        self.data = data

    def chunks(self, target: _Target, batch_size: int) -> Iterator[np.ndarray]:
        for i, item in enumerate(self.data):
            if isinstance(item, (tuple, list)) and item:
                item = item[0]
            arr = np.asarray(item)
            what = f"item {i} of the calibration iterable"
            layout, shape = _inspect(arr.shape, arr.dtype, what, target)
            if i == 0:
                _warn_if_raw_floats(arr, what)
            yield target.from_array(arr.reshape(shape), layout)


class _Noise(_Source):
    """Uniform random 0..255 pixels put through the preprocess; image i is seeded by (seed, i)."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed, self.total = count, seed, count
        self.label = f"synthetic noise ({count} images, seed {seed})"

    def chunks(self, target: _Target, batch_size: int) -> Iterator[np.ndarray]:
        hwc = (target.height, target.width, target.channels)
        for start in range(0, self.count, batch_size):
            stop = min(start + batch_size, self.count)
            pixels = np.stack([np.random.default_rng([self.seed, i]).integers(0, 256, hwc, dtype=np.uint8)
                               for i in range(start, stop)])
            yield target.from_pixels(pixels)


def _make_target(shape: Sequence[int], layout: str, preprocess: Preprocess | None) -> _Target:
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
    pre = preprocess if preprocess is not None else PRESETS["imagenet"]
    pre.vectors(int(c))  # fails early if the mean/std do not fit the channel count
    if int(c) == 1 and max(len(pre.mean), len(pre.std)) > 1:
        logger.info("1-channel model: using the average of the %r mean/std values", pre.name)
    return _Target(lay, int(c), int(h), int(w), pre)


def _check_counts(batch_size: int, max_images: int | None, synthetic: int | None, seed: int) -> None:
    for name, value in (("batch_size", batch_size), ("max_images", max_images), ("synthetic", synthetic)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise MBSError(f"{name} must be a whole number >= 1, got {value!r} — pass a positive count")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MBSError(f"seed must be a whole number >= 0, got {seed!r} — pass e.g. seed=0")


def _open_path(path: Path, target: _Target) -> _Source:
    if not path.exists():
        raise MBSError(f"calibration data not found: {path} — check the path (image folder, image, .npy or .npz)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _Arrays(_load_npy(path), f"npy file {path}", target)
    if suffix == ".npz":
        return _NpzMember(path, target)
    if path.is_file() and suffix not in IMAGE_EXTENSIONS:
        raise MBSError(f"unsupported calibration file {path.name} — pass an image folder, an image "
                       f"({_EXT_TEXT}), a .npy or a .npz file")
    if target.channels not in (1, 3):
        raise MBSError(f"images can feed only 1- or 3-channel models, this one has {target.channels} — "
                       "pass the data as a .npy/.npz array instead")
    if path.is_file():
        return _ImageFiles([path], f"image file {path}")
    files = _find_images(path)
    if not files:
        raise MBSError(f"no image files ({_EXT_TEXT}) found under {path}, searched recursively — point "
                       "at a folder of images, or at a .npy/.npz array file")
    return _ImageFiles(files, f"image folder {path} ({len(files)} images)")


def _find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders are ignored."""
    found = sorted((p.relative_to(root).parts, p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return [p for parts, p in found if not any(part.startswith(".") for part in parts) and p.is_file()]


def open_calibration(data, *, shape: Sequence[int], layout: str, preprocess: Preprocess | None = None,
                     synthetic: int | None = None, max_images: int | None = None,
                     batch_size: int = 32, seed: int = 0) -> Calibration:
    """Open calibration data for a model input of ``shape`` (batch first) in ``layout``.

    ``data``: an image folder or file, a .npy/.npz file, a numpy array, or an iterable of
    arrays (single images or batches); or None with ``synthetic=N`` for N noise images.
    ``preprocess`` defaults to the "imagenet" preset; float arrays skip it.
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
        source: _Source = _Noise(int(synthetic), int(seed))
    elif isinstance(data, (str, os.PathLike)):
        source = _open_path(Path(data), target)
    elif isinstance(data, np.ndarray):
        source = _Arrays(data, "numpy array", target)
    elif isinstance(data, Iterable):
        source = _IterableArrays(data)
    else:
        raise MBSError(f"cannot use a {type(data).__name__} as calibration data — pass a path,"
                       " a numpy array or an iterable of arrays")
    logger.debug("calibration: %s -> %s %s", source.label, target.layout, target.image_shape)
    return Calibration(source, target, batch_size=int(batch_size), max_images=max_images,
                       synthetic=data is None)

