"""The image size calibration data holds: a model with a dynamic H/W is analysed at that size."""
from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from onnxmbs.errors import MBSError
from onnxmbs.data.calibration import PIL_ERRORS, find_images
from onnxmbs.data.sources import load_npy, pick_key, read_npy_header


def _item_hw(shape: Sequence[int], layout: str, channels: int | None) -> tuple[int, int] | None:
    """(H, W) of an array of images (CHW/HWC or a batch), given the model's layout and channel count."""
    item = tuple(int(d) for d in (shape[1:] if len(shape) == 4 else shape))
    if len(item) != 3:
        return None
    fits = {lay: hw for lay, c, hw in (("NCHW", item[0], item[1:]), ("NHWC", item[2], item[:2]))
            if c == channels or (channels is None and c in (1, 3))}
    return fits.get(layout) or next(iter(fits.values()), None)


def data_hw(data, *, layout: str, channels: int | None = None) -> tuple[int, int] | None:
    """The image size (H, W) that calibration ``data`` holds, for a model whose input size is dynamic.

    Arrays give their own size; an image folder or file gives its first image's size. None when it
    cannot be told without reading the data (an iterable) or the data is not there.
    """
    if isinstance(data, np.ndarray):
        return _item_hw(data.shape, layout, channels)
    if not isinstance(data, (str, os.PathLike)) or not Path(data).exists():
        return None
    path = Path(data)
    try:
        if path.suffix.lower() == ".npy":
            return _item_hw(load_npy(path).shape, layout, channels)
        if path.suffix.lower() == ".npz":
            with zipfile.ZipFile(path) as zf:
                key = pick_key([n[:-4] for n in zf.namelist() if n.endswith(".npy")], path)
                with zf.open(key + ".npy") as f:
                    return _item_hw(read_npy_header(f)[0], layout, channels)
        files = [path] if path.is_file() else find_images(path)
        if files:
            with Image.open(files[0]) as img:
                return img.size[1], img.size[0]
    except (*PIL_ERRORS, zipfile.BadZipFile, ValueError, MBSError):
        return None  # the data is unreadable: opening it later says why
    return None
