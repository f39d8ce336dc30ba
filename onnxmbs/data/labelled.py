"""Labelled data for measuring accuracy: images with class indices, in the model's layout.

Three sources, all read through the calibration loaders (same resizing, cropping and
``--preprocess`` normalisation as ``onnxmbs plan --data``):

* a ``.npz`` file with an image array (``images`` or ``x``) and a 1-D label array (``labels`` or ``y``);
* an image folder with one sub-folder per class, ``root/<class>/<image>``: the class index is the
  position of the folder name in sorted order, or in the list given by ``classes=`` (``--classes FILE``);
* through the API, ``(x, y)`` array pairs: one pair, or an iterable of batches.

The data is held in memory as one float32 array, so that every later pass (accuracy of many
candidate models) reads it without decoding images again.
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.data.calibration import IMAGE_EXTENSIONS, open_calibration
from onnxmbs.data.normalisation import Normalisation, Preprocess
from onnxmbs.data.sources import IMAGE_KEYS, LABEL_KEYS

logger = logging.getLogger(__name__)

_HOW = ("give labelled data: a .npz with 'images' and 'labels', a folder with one sub-folder of images per "
        "class, or (x, y) arrays")


@dataclass(frozen=True)
class LabelledData:
    """Images (float32, batch first, in ``layout``) and their int64 class indices (``y`` None: images
    without labels, from :func:`open_images`, for the measures that compare with the original model)."""

    x: np.ndarray = field(repr=False)
    y: np.ndarray | None = field(repr=False)
    layout: str
    source: str = "arrays"
    classes: tuple[str, ...] = ()  # class names where known (image folders, --classes)
    normalisation: Normalisation | None = None  # how uint8 pixels were normalised, when it was decided

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes) or int(self.y.max()) + 1

    def take(self, index: np.ndarray) -> LabelledData:
        return replace(self, x=self.x[index], y=None if self.y is None else self.y[index])

    def split(self, fraction: float, *, seed: int = 0) -> tuple[LabelledData, LabelledData]:
        """(train, held out): a seeded, per-class split keeping ``fraction`` of each class out."""
        rng = np.random.default_rng(seed)
        per_class = [np.flatnonzero(self.y == c) for c in np.unique(self.y)]
        held = np.concatenate([rng.permutation(ids)[:max(1, round(fraction * len(ids)))] for ids in per_class])
        mask = np.zeros(len(self.y), bool)
        mask[held] = True
        return self.take(np.flatnonzero(~mask)), self.take(np.flatnonzero(mask))

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(images, labels or None) in order, ``batch_size`` rows at a time (the last batch may be shorter)."""
        for start in range(0, len(self.x), batch_size):
            yield self.x[start:start + batch_size], None if self.y is None else self.y[start:start + batch_size]

    def check_classes(self, num_classes: int, *, what: str = "the model") -> None:
        """Labels and class names must fit ``num_classes`` outputs."""
        if self.classes and len(self.classes) != num_classes:
            raise MBSError(f"{self.source} has {len(self.classes)} classes but {what} outputs {num_classes} — "
                           f"give data with one class folder (or --classes entry) per model output")
        if self.y is None:
            return
        top = int(self.y.max())
        if top >= num_classes:
            raise MBSError(f"{self.source} has label {top}, out of range for {what} with {num_classes} outputs "
                           f"(labels must be 0..{num_classes - 1}) — check the labels or the model")


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Class names, one a line (blank lines and surrounding spaces ignored), for ``--classes FILE``."""
    path = Path(path)
    if not path.is_file():
        raise MBSError(f"classes file not found: {path} — give a text file with one class folder name a line")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise MBSError(f"{path} lists no classes — write one class folder name a line")
    if len(set(names)) != len(names):
        raise MBSError(f"{path} lists a class twice — each class folder name must appear once")
    return names


def _labels(y: np.ndarray, count: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != count:
        raise MBSError(f"{what} has labels of shape {y.shape} for {count} images — give one class index per "
                       "image, a 1-D array of the same length")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                   and np.all(np.isfinite(y)) and np.all(y == np.round(y)))):
        raise MBSError(f"{what} has labels of dtype {y.dtype} that are not whole class indices — "
                       "give integer labels 0..classes-1 (not one-hot vectors or names)")
    if count and y.min() < 0:
        raise MBSError(f"{what} has a negative label ({int(y.min())}) — labels are class indices 0..classes-1")
    return y.astype(np.int64)


def _images(data, *, shape: Sequence[int], layout: str, preprocess: Preprocess | Normalisation | None,
            max_images: int | None) -> np.ndarray:
    calib = open_calibration(data, shape=shape, layout=layout, preprocess=preprocess, max_images=max_images,
                             batch_size=256)
    return np.concatenate(list(calib.batches()))


def _from_npz(path: Path, **target) -> LabelledData:
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise MBSError(f"cannot read {path} as a .npz file ({exc}) — save it with "
                       "np.savez(path, images=..., labels=...)") from None
    label_key = next((k for k in LABEL_KEYS if k in keys), None)
    image_key = next((k for k in IMAGE_KEYS if k in keys), None)
    if label_key is None or image_key is None:
        raise MBSError(f"{path} is unlabelled: it holds arrays {sorted(keys)}, expected one of "
                       f"{'/'.join(IMAGE_KEYS)} and one of {'/'.join(LABEL_KEYS)} — save it with "
                       "np.savez(path, images=..., labels=...)")
    with np.load(path) as npz:
        y = npz[label_key]
    x = _images(path, **target)
    if len(x) > len(y) or (target["max_images"] is None and len(x) != len(y)):
        raise MBSError(f"{path} holds {len(x)} images but {len(y)} labels — give one label per image")
    return LabelledData(x, _labels(y[:len(x)], len(x), str(path)), target["layout"], f"npz file {path}")


def has_labels(data) -> bool:
    """Whether ``data`` carries labels as :func:`open_labelled` reads them: a ``.npz`` with a label array,
    a folder of class folders (no loose images), ``(x, y)`` pairs or :class:`LabelledData`."""
    if isinstance(data, LabelledData) or (isinstance(data, tuple) and len(data) == 2):
        return True
    if not isinstance(data, (str, os.PathLike)):
        return False
    path = Path(data)
    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        return any(p.is_dir() for p in entries) and not any(
            p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries)
    if path.suffix.lower() == ".npz" and path.is_file():
        try:
            with zipfile.ZipFile(path) as zf:
                keys = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        except (zipfile.BadZipFile, OSError):
            return False
        return any(k in keys for k in LABEL_KEYS)
    return False


def _class_folders(root: Path, classes: Sequence[str] | None) -> list[str]:
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not found or loose:
            raise MBSError(f"{root} is unlabelled: {'it has images outside class folders' if found else 'no class folders'}"
                           f" — lay it out as {root}/<class>/<image>, one sub-folder per class")
        return found
    missing = [c for c in classes if c not in found]
    if missing:
        raise MBSError(f"class folder(s) {', '.join(missing[:5])} listed in --classes are missing under {root} — "
                       "fix the classes file or add the folders")
    return list(classes)


def _from_folder(root: Path, classes: Sequence[str] | None, **target) -> LabelledData:
    names = _class_folders(root, classes)
    xs, ys, limit = [], [], target["max_images"]
    for index, name in enumerate(names):
        if limit is not None and sum(map(len, xs)) >= limit:
            break
        left = None if limit is None else limit - sum(map(len, xs))
        x = _images(root / name, **{**target, "max_images": left})
        xs.append(x)
        ys.append(np.full(len(x), index, np.int64))
    x = np.concatenate(xs)
    logger.info("read %d images of %d classes from %s", len(x), len(names), root)
    return LabelledData(x, np.concatenate(ys), target["layout"], f"image folder {root}", tuple(names))


def _from_pairs(pairs: Iterable, **target) -> LabelledData:
    xs, ys = [], []
    for i, item in enumerate(pairs):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise MBSError(f"item {i} of the data is not an (x, y) pair — {_HOW}")
        x = _images(np.asarray(item[0]), **{**target, "max_images": None})
        xs.append(x)
        ys.append(_labels(np.atleast_1d(item[1]), len(x), f"item {i} of the data"))
    if not xs:
        raise MBSError(f"the labelled data yielded no (x, y) batches — {_HOW}")
    x, y, limit = np.concatenate(xs), np.concatenate(ys), target["max_images"]
    return LabelledData(x[:limit], y[:limit], target["layout"], f"{len(xs)} (x, y) batch(es)")


def open_labelled(data, *, shape: Sequence[int], layout: str, preprocess: Preprocess | Normalisation | None = None,
                  classes: Sequence[str] | str | Path | None = None, max_images: int | None = None) -> LabelledData:
    """Labelled data for a model input of ``shape`` in ``layout``.

    ``data``: a ``.npz`` path, an image folder of class folders, one ``(x, y)`` pair of arrays, an
    iterable of ``(x, y)`` batches, or a :class:`LabelledData` (returned as it is).
    ``classes``: class folder names in class-index order (a list, or a file with one name a line).
    ``preprocess``: a :class:`Normalisation` decided by ``resolve_normalisation`` (kept on the result),
    or an explicit :class:`Preprocess`; None is the "imagenet" preset.
    """
    if isinstance(data, LabelledData):
        return data
    if isinstance(classes, (str, os.PathLike)):
        classes = read_classes(classes)
    target = {"shape": shape, "layout": str(layout).upper(), "preprocess": preprocess, "max_images": max_images}
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            labelled = _from_folder(path, classes, **target)
        elif path.suffix.lower() == ".npz" and path.is_file():
            labelled = _from_npz(path, **target)
        elif not path.exists():
            raise MBSError(f"labelled data not found: {path} — check the path")
        else:
            raise MBSError(f"{path} is unlabelled ({path.suffix or 'no suffix'}) — {_HOW}")
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        labelled = _from_pairs([data], **target)
    elif isinstance(data, np.ndarray):
        raise MBSError(f"a bare image array is unlabelled — {_HOW}")
    elif isinstance(data, Iterable):
        labelled = _from_pairs(data, **target)
    else:
        raise MBSError(f"cannot use a {type(data).__name__} as labelled data — {_HOW}")
    if classes is not None and not labelled.classes:
        labelled = replace(labelled, classes=tuple(classes))
    if isinstance(preprocess, Normalisation):
        labelled = replace(labelled, normalisation=preprocess)
    return labelled


def open_images(data, *, shape: Sequence[int], layout: str, preprocess: Preprocess | Normalisation | None = None,
                max_images: int | None = None) -> LabelledData:
    """Images without labels (any data the calibration reads: a folder, a .npy/.npz, an array), held in
    memory as a :class:`LabelledData` whose ``y`` is None, for measures against the original model."""
    x = _images(data, shape=shape, layout=str(layout).upper(), preprocess=preprocess, max_images=max_images)
    norm = preprocess if isinstance(preprocess, Normalisation) else None
    label = str(data) if isinstance(data, (str, os.PathLike)) else "arrays"
    return LabelledData(x, None, str(layout).upper(), label, normalisation=norm)
