"""Normalisation presets for calibration images and uint8 arrays (imagenet, tf, caffe, raw).

Preprocessing travels with the model: an ONNX file may name its own in ``metadata_props``
(:data:`METADATA_KEYS`): ``onnxmbs.preprocess`` = a preset name, and optionally ``onnxmbs.mean`` /
``onnxmbs.std`` = comma-separated per-channel values in [0,1] pixel units (RGB order).

One rule decides the normalisation of every command and API that reads images,
:func:`resolve_normalisation`: explicit ``--preprocess``/``--mean``/``--std`` > the model's
metadata > ``imagenet``. It returns a :class:`Normalisation` that records where the decision
came from; records (plans, stats files, compact and blocks records, handbooks) keep it, and
every ONNX file onnxmbs writes carries its source's metadata (:func:`set_metadata`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

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


def make_preprocess(preset: str, *, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> Preprocess:
    """A preset by name; explicit mean/std in [0,1] pixel units override it.

    This builds what it is told. Which preset a model's data gets is decided by
    :func:`resolve_normalisation`, never by a default here."""
    if preset is None:
        raise MBSError("no preprocess preset given — name one of " + ", ".join(PRESETS)
                       + " (a model's own is decided by resolve_normalisation)")
    base = PRESETS.get(str(preset).lower())
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
    """The ``metadata_props`` entries that record a model's preprocessing (checked by building it).

    Write them with :func:`set_metadata`, which replaces the keys a model already has."""
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


ORIGINS = {"flag": "given by --preprocess/--mean/--std",
           "model metadata": f"from the model's metadata {META_PRESET}",
           "record": "as recorded in the plan (the normalisation its statistics were measured with)",
           "default": f"the default: the model has no {META_PRESET} metadata; pass --preprocess if it expects another"}
_DECISIONS = logging.getLogger(__name__ + ".decisions")  # the CLI shows these lines (one per model)


@dataclass(frozen=True)
class Normalisation:
    """A decided normalisation: the preset, explicit mean/std ([0,1] pixel units) and where it came from."""

    preset: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    origin: str = "default"  # one of ORIGINS

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise MBSError(f"normalisation origin {self.origin!r} is not one of {', '.join(ORIGINS)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        self.preprocess  # noqa: B018 - checks preset and values

    @property
    def preprocess(self) -> Preprocess:
        return make_preprocess(self.preset, mean=self.mean, std=self.std)

    @property
    def name(self) -> str:
        return self.preprocess.name

    def describe(self) -> str:
        """One line for the user: what is applied and why."""
        return f"{self.name} ({ORIGINS[self.origin]})"

    def metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries a model written with this normalisation carries."""
        return preprocess_metadata(self.preset, mean=self.mean, std=self.std)

    def to_json(self) -> dict[str, Any]:
        return {"preset": self.preset, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "origin": self.origin}

    @classmethod
    def from_json(cls, data: Any, *, where: str = "the record") -> Normalisation:
        if not isinstance(data, Mapping) or not isinstance(data.get("preset"), str):
            raise MBSError(f"{where}: normalisation must be an object with a preset name, not {data!r}")
        values = {k: data.get(k) for k in ("mean", "std")}
        for key, value in values.items():
            if value is not None and (not isinstance(value, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise MBSError(f"{where}: normalisation.{key} must be a list of numbers or null, not {value!r}")
        try:
            return cls(data["preset"], origin=str(data.get("origin", "default")), **values)
        except MBSError as exc:
            raise MBSError(f"{where}: {exc}") from None


def resolve_normalisation(metadata: Mapping[str, str], preset: str | None = None, *,
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                          where: str = "the model", recorded: Normalisation | None = None,
                          announce: bool = True) -> Normalisation:
    """THE rule, for every command and API that reads images: what the user gave (``--preprocess``,
    ``--mean``, ``--std``) wins; what it leaves open comes from the model's metadata
    (``onnxmbs.preprocess``/``onnxmbs.mean``/``onnxmbs.std``); else, for a model that is not an ONNX
    file (``retrain``'s PyTorch/Keras model), the normalisation a plan ``recorded``; else ``imagenet``.

    ``announce``: log the decision as one line (the CLI shows it) — off where nothing is read.
    """
    given = preset is not None or mean is not None or std is not None
    if recorded is not None and preset is None and META_PRESET not in metadata:
        metadata = {**metadata, **recorded.metadata()}
        if not given:
            decided = replace(recorded, origin="record")
            if announce:
                _DECISIONS.info("normalisation of %s: %s", where, decided.describe())
            return decided
    from_meta = preset is None and META_PRESET in metadata
    if from_meta:
        preset = metadata[META_PRESET]
        if str(preset).lower() not in PRESETS:
            raise MBSError(f"{where} names preprocess {preset!r} in its metadata ({META_PRESET}), not one of "
                           f"{', '.join(PRESETS)} — pass --preprocess explicitly")
        mean = mean if mean is not None else _meta_floats(metadata, META_MEAN, where)
        std = std if std is not None else _meta_floats(metadata, META_STD, where)
    origin = "flag" if given else "model metadata" if from_meta else "default"
    decided = Normalisation(str(DEFAULT_PRESET if preset is None else preset).lower(), mean=mean, std=std,
                            origin=origin)
    if announce:
        _DECISIONS.info("normalisation of %s: %s", where, decided.describe())
    return decided


def preprocess_for(metadata: Mapping[str, str], preset: str | None = None, *, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, where: str = "the model") -> Preprocess:
    """The :class:`Preprocess` of :func:`resolve_normalisation` (the one rule)."""
    return resolve_normalisation(metadata, preset, mean=mean, std=std, where=where).preprocess


def set_metadata(proto: Any, entries: Mapping[str, str], *, clear: Sequence[str] = METADATA_KEYS) -> None:
    """Put ``entries`` into an ONNX ``ModelProto``'s ``metadata_props`` in place, replacing existing keys
    (and dropping stale ``clear`` keys, so a new preset never inherits an old mean/std)."""
    drop = set(entries) | set(clear)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in drop]
    del proto.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        proto.metadata_props.add(key=key, value=str(value))
