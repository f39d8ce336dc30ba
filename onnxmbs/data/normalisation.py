"""Normalisation presets for calibration images and uint8 arrays (imagenet, tf, caffe, raw).

Preprocessing travels with the model: an ONNX file may name its own in ``metadata_props``
(:data:`METADATA_KEYS`): ``onnxmbs.preprocess`` = a preset name, and optionally ``onnxmbs.mean`` /
``onnxmbs.std`` = comma-separated per-channel values in [0,1] pixel units (RGB order). With no
``--preprocess``/``--mean``/``--std`` given, :func:`preprocess_for` uses them, else ``imagenet``;
anything given explicitly wins.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnxmbs.errors import MBSError

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocess:
    """0..255 RGB pixels -> model input: ``(pixel / scale - mean) / std`` per channel.

    With ``bgr`` channels are flipped first (mean/std in BGR order); one value fits all channels.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    bgr: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        mean, std = tuple(map(float, self.mean)), tuple(map(float, self.std))
        for field, value in (("mean", mean), ("std", std), ("scale", float(self.scale))):
            object.__setattr__(self, field, value)
        if not mean or not std or (len(mean) != len(std) and 1 not in (len(mean), len(std))):
            raise MBSError(f"preprocess {self.name} has {len(mean)} mean and {len(std)} std values — "
                           "give one value per channel (or a single value) for both")
        if not all(map(math.isfinite, mean)) or min(std) <= 0 or not self.scale > 0:
            raise MBSError(f"preprocess {self.name} needs finite means and positive std/scale, got "
                           f"mean={mean} std={std} scale={self.scale} — fix the values")

    def vectors(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel float32 mean and std for a model with ``channels`` channels."""
        return _per_channel(self.mean, channels, "mean", self), _per_channel(self.std, channels, "std", self)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Channel-last pixels ``(..., C)`` in RGB order, 0..255 -> float32 model values."""
        import numpy as np

        x = np.asarray(pixels, dtype=np.float32)
        if self.bgr and x.shape[-1] == 3:
            x = x[..., ::-1]
        mean, std = self.vectors(x.shape[-1])
        return (x / np.float32(self.scale) - mean) / std


def _per_channel(values: tuple[float, ...], channels: int, what: str, pre: Preprocess) -> np.ndarray:
    import numpy as np

    if len(values) == channels or len(values) == 1:
        return np.broadcast_to(np.asarray(values, np.float32), (channels,))
    if channels == 1:  # grayscale model, RGB statistics: use their average
        return np.asarray([np.mean(values)], np.float32)
    raise MBSError(f"preprocess {pre.name} has {len(values)} {what} values but the model has {channels} "
                   f"channels — pass {channels} mean/std values")


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255.0, name="imagenet"),
    "tf": Preprocess((1.0,), (1.0,), 127.5, name="tf"),
    "caffe": Preprocess((103.939, 116.779, 123.68), (1.0,), 1.0, bgr=True, name="caffe"),
    "raw": Preprocess((0.0,), (1.0,), 255.0, name="raw"),
}


def make_preprocess(preset: str | None = "imagenet", *, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> Preprocess:
    """A preset by name (None = "raw"); explicit mean/std in [0,1] pixel units override it."""
    base = PRESETS.get("raw" if preset is None else str(preset).lower())
    if base is None:
        raise MBSError(f"unknown preprocess preset {preset!r} — use one of: {', '.join(PRESETS)}")
    if mean is None and std is None:
        return base
    unit = base.scale / 255.0  # preset units -> [0,1] pixel units
    mean_v = tuple(mean) if mean is not None else tuple(m * unit for m in base.mean)
    std_v = tuple(std) if std is not None else tuple(s * unit for s in base.std)
    if mean_v and max(mean_v) > 1.0:
        raise MBSError(f"mean {mean_v} is not in [0,1] pixel units — give it like torchvision "
                       "(e.g. 0.485, 0.456, 0.406): divide 0..255 values by 255")
    return Preprocess(mean_v, std_v, 255.0, bgr=base.bgr, name=f"{base.name} with the given mean/std")


META_PRESET, META_MEAN, META_STD = "onnxmbs.preprocess", "onnxmbs.mean", "onnxmbs.std"
METADATA_KEYS = (META_PRESET, META_MEAN, META_STD)
DEFAULT_PRESET = "imagenet"


def preprocess_metadata(preset: str, *, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> dict[str, str]:
    """The ``metadata_props`` entries that record a model's preprocessing (checked by building it)."""
    make_preprocess(preset, mean=mean, std=std)
    entries = {META_PRESET: preset}
    for key, values in ((META_MEAN, mean), (META_STD, std)):
        if values is not None:
            entries[key] = ",".join(f"{float(v):g}" for v in values)
    return entries


def _meta_floats(metadata: Mapping[str, str], key: str, where: str) -> tuple[float, ...] | None:
    if key not in metadata:
        return None
    try:
        return tuple(float(v) for v in metadata[key].split(",") if v.strip())
    except ValueError:
        raise MBSError(f"{where} has metadata {key}={metadata[key]!r}, not a list of numbers — fix the model's "
                       "metadata or pass --preprocess/--mean/--std explicitly") from None


def preprocess_for(metadata: Mapping[str, str], preset: str | None = None, *, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, where: str = "the model") -> Preprocess:
    """What the user gave wins; what it leaves open comes from the model's metadata, else ``imagenet``."""
    if preset is None and META_PRESET in metadata:
        preset = metadata[META_PRESET]
        if str(preset).lower() not in PRESETS:
            raise MBSError(f"{where} names preprocess {preset!r} in its metadata ({META_PRESET}), not one of "
                           f"{', '.join(PRESETS)} — pass --preprocess explicitly")
        mean = mean if mean is not None else _meta_floats(metadata, META_MEAN, where)
        std = std if std is not None else _meta_floats(metadata, META_STD, where)
    return make_preprocess(DEFAULT_PRESET if preset is None else preset, mean=mean, std=std)
