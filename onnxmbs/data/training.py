"""Labelled training data for retraining and the handbook: the labelled loader at the model's size.

The same reader as every other command (:func:`onnxmbs.data.labelled.open_labelled`): a ``.npz``
with an image array (:data:`~onnxmbs.data.sources.IMAGE_KEYS`, NCHW or NHWC; uint8 pixels are
normalised, float arrays are used as they are) and a label array
(:data:`~onnxmbs.data.sources.LABEL_KEYS`), or an image folder ``root/<class>/<image>`` (classes in
sorted order). Images are resized (shorter side) and centre-cropped to the model's input size like
calibration images.
"""
from __future__ import annotations

import logging
from pathlib import Path

from onnxmbs.data.calibration import LAYOUTS
from onnxmbs.data.labelled import LabelledData, open_labelled
from onnxmbs.data.normalisation import Normalisation, Preprocess
from onnxmbs.data.size import data_hw
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)

Dataset = LabelledData  # training data is labelled data: one record, one reader


def load_dataset(path: str | Path, *, normalisation: Normalisation | Preprocess, layout: str = "NCHW",
                 size: tuple[int, int] | None = None, channels: int = 3) -> LabelledData:
    """Read ``path`` (a ``.npz`` file or a folder of class folders) as float32 images in ``layout``,
    ``size`` (H, W; default: the data's own size) and ``channels``, normalised by ``normalisation``
    (decide it with :func:`~onnxmbs.data.normalisation.resolve_normalisation`)."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise MBSError(f"unknown layout {layout!r} — use 'NCHW' (PyTorch) or 'NHWC' (Keras)")
    if not (path.is_dir() or (path.suffix.lower() == ".npz" and path.is_file())):
        raise MBSError(f"training data not found or not supported: {path} — pass a .npz (images, labels) or a "
                       "folder of class folders")
    hw = tuple(size) if size is not None else data_hw(_first_class(path), layout=layout, channels=channels)
    if hw is None:
        raise MBSError(f"cannot tell the image size of {path} — pass the model's input size")
    shape = (1, channels, *hw) if layout == "NCHW" else (1, *hw, channels)
    return open_labelled(path, shape=shape, layout=layout, preprocess=normalisation)


def _first_class(path: Path) -> Path:
    """Where to read the image size: the .npz itself, or the first class folder of an image folder."""
    if path.is_file():
        return path
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return folders[0] if folders else path
