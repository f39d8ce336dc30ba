"""A user's own quality metric: ``--metric python:FILE.py:FUNCTION`` for heads that are not classifiers.

``FUNCTION(outputs, targets) -> float`` (higher is better) is called once with

* ``outputs``: the model's outputs over every image of the data, a list of numpy arrays in the
  graph's output order (``outputs[0]`` for a single output), batch first;
* ``targets``: the data file's other arrays by name — every array of the ``.npz`` except the
  images (e.g. ``masks`` for segmentation, boxes for detection), in the file's order of images.

The images are read like every other command's (the ``.npz`` image key, the model's layout, the
one normalisation rule). ``tools/metrics/segmentation.py`` is a worked example (pixel accuracy and
mean IoU over ``masks``).
"""
from __future__ import annotations

import importlib.util
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.errors import MBSError

PREFIX = "python:"


@dataclass(frozen=True)
class Metric:
    """A loaded user metric: where it came from and the function."""

    spec: str
    name: str
    function: Callable[[list[np.ndarray], dict[str, np.ndarray]], Any]
    path: Path | None = None  # the file that defines it


def load_metric(spec: str) -> Metric:
    """``python:FILE.py:FUNCTION`` -> the function; a missing file or function is one line."""
    if not spec.startswith(PREFIX) or spec.count(":") < 2:
        raise MBSError(f"--metric {spec!r}: write python:FILE.py:FUNCTION (a function (outputs, targets) -> float)")
    file, _, name = spec[len(PREFIX):].rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise MBSError(f"--metric: {path} not found — give the path of a Python file defining {name}(outputs, targets)")
    module_spec = importlib.util.spec_from_file_location(f"onnxmbs_user_metric_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: any error is theirs to fix
        raise MBSError(f"--metric: importing {path} failed ({type(exc).__name__}: {exc}) — fix the file") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise MBSError(f"--metric: {path} defines no function {name!r} — define {name}(outputs, targets) -> float")
    return Metric(spec, name, function, path=path)


def read_targets(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` except its images (see :data:`onnxmbs.data.sources.IMAGE_KEYS`)."""
    from onnxmbs.data.sources import pick_key

    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise MBSError(f"--metric reads its targets from a .npz beside the images: {path} is not one — save "
                       "np.savez(path, images=..., masks=...)")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise MBSError(f"cannot read {path} as a .npz file ({exc})") from None
    images = pick_key(keys, path)
    with np.load(path) as npz:
        try:
            return {k: npz[k] for k in keys if k != images}
        except ValueError as exc:  # object arrays need pickle, which onnxmbs never loads
            raise MBSError(f"{path} holds an array of Python objects ({exc.__class__.__name__}: object arrays "
                           "cannot be read without pickle) — save numeric arrays only: pad per-image lists such "
                           "as boxes to a fixed count per image, with a count or mask array beside them") from None


def check_targets(targets: dict[str, np.ndarray], images: int, where: str) -> None:
    """Every target array must hold one entry per image (its first axis), or the metric compares the wrong ones."""
    wrong = {k: len(v) if np.ndim(v) else 0 for k, v in targets.items() if not np.ndim(v) or len(v) != images}
    if wrong:
        listed = ", ".join(f"{k!r} ({n})" for k, n in wrong.items())
        raise MBSError(f"--metric: {where} gives {images} images but the targets {listed} have another length — "
                       "save one target per image along the first axis (and do not cut the images with "
                       "--max-images)")


def all_outputs(session: Any, batches: Sequence[np.ndarray] | Any) -> list[np.ndarray]:
    """Every output of ``session`` over ``batches``, concatenated along the batch axis."""
    name = session.get_inputs()[0].name
    parts: list[list[np.ndarray]] = []
    for batch in batches:
        outs = session.run(None, {name: batch})
        parts = [[o] for o in outs] if not parts else [p + [o] for p, o in zip(parts, outs)]
    if not parts:
        raise MBSError("no images to measure the metric on — pass data with at least one image")
    return [np.concatenate(p) for p in parts]


def score(metric: Metric, outputs: list[np.ndarray], targets: dict[str, np.ndarray]) -> float:
    """The metric's value; an exception or a value that is not a finite number is the metric's fault."""
    check_targets(targets, len(outputs[0]) if outputs else 0, "the data")
    try:
        value = metric.function(outputs, targets)
    except Exception as exc:  # noqa: BLE001 - the user's function
        raise MBSError(f"--metric {metric.name} raised {type(exc).__name__}: {exc} — fix the metric") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MBSError(f"--metric {metric.name} returned {type(value).__name__}, not a number — return a float "
                       "(higher is better)") from None
    if not math.isfinite(value):
        raise MBSError(f"--metric {metric.name} returned {value} — return a finite float")
    return value


def measure(model: Any, data: str | Path, metric: Metric, *, batch_size: int = 64, provider: str = "cpu",
            input_shape: tuple[int, ...] | None = None, preprocess: str | None = None,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> float:
    """``metric`` of ``model`` on the images of the ``.npz`` ``data`` against its other arrays."""
    from onnxmbs.data.calibration import open_calibration
    from onnxmbs.data.normalisation import resolve_normalisation
    from onnxmbs.graph.load import LoadedModel, load_model
    from onnxmbs.runtime.session import choose_provider, make_session
    from onnxmbs.stats.accuracy import runnable

    targets = read_targets(data)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, input_shape=input_shape)
    norm = resolve_normalisation(loaded.metadata, preprocess, mean=mean, std=std, where=loaded.path)
    calib = open_calibration(data, shape=loaded.input.shape, layout=loaded.input.layout, preprocess=norm,
                             batch_size=batch_size if loaded.batch_dynamic else loaded.input.shape[0])
    session = make_session(runnable(loaded), choose_provider(provider))
    return score(metric, all_outputs(session, calib.batches()), targets)
