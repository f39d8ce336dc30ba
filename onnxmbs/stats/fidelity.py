"""Fidelity to a reference model, without labels: how closely a model's outputs follow the original's.

Per output, over all its elements across all the images: the relative L2 error
``‖y − y_ref‖₂ / ‖y_ref‖₂``, the mean cosine similarity of each image's output with the reference's,
and the largest absolute difference. Both models are run on the same float32 batches (already
normalised, in the model's layout); their outputs must agree in number and shape.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.runtime.session import make_session

_TINY = 1e-30


@dataclass(frozen=True)
class OutputFidelity:
    """One output's agreement with the reference's."""

    name: str
    relative_l2: float  # ‖y − y_ref‖₂ / ‖y_ref‖₂ over every element of every image
    cosine: float  # mean over images of cos(y_i, y_ref_i)
    max_abs: float  # max |y − y_ref|

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "relative_l2": self.relative_l2, "cosine": self.cosine, "max_abs": self.max_abs}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputFidelity:
        return cls(str(data["name"]), float(data["relative_l2"]), float(data["cosine"]), float(data["max_abs"]))


@dataclass(frozen=True)
class Fidelity:
    """A model's outputs against a reference's on the same images."""

    images: int
    outputs: tuple[OutputFidelity, ...]

    @property
    def worst_relative_l2(self) -> float:
        return max((o.relative_l2 for o in self.outputs), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "outputs": [o.to_json() for o in self.outputs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fidelity:
        return cls(int(data["images"]), tuple(OutputFidelity.from_json(o) for o in data["outputs"]))


class _Sums:
    """Running sums for one output: ‖d‖², ‖y_ref‖², Σ cos, max |d|."""

    def __init__(self) -> None:
        self.diff2 = self.ref2 = self.cosines = self.max_abs = 0.0

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        g = got.reshape(len(got), -1).astype(np.float64)
        w = want.reshape(len(want), -1).astype(np.float64)
        d = g - w
        self.diff2 += float(np.sum(d * d))
        self.ref2 += float(np.sum(w * w))
        norms = np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1)
        self.cosines += float(np.sum(np.where(norms > _TINY, np.sum(g * w, axis=1) / np.maximum(norms, _TINY),
                                              np.all(d == 0, axis=1).astype(np.float64))))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d))) if d.size else 0.0)

    def result(self, name: str, images: int) -> OutputFidelity:
        rel = math.sqrt(self.diff2 / self.ref2) if self.ref2 > _TINY else (0.0 if self.diff2 == 0 else math.inf)
        return OutputFidelity(name, rel, self.cosines / max(images, 1), self.max_abs)


def fidelity(model: Any, reference: Any, batches: Iterable[np.ndarray], *, provider: str = "CPUExecutionProvider",
             names: Sequence[str] = ("model", "reference")) -> Fidelity:
    """Run ``model`` and ``reference`` (ONNX protos or bytes with the same input) on ``batches``."""
    sessions = [make_session(m, provider) for m in (model, reference)]
    inputs = [s.get_inputs()[0].name for s in sessions]
    outs = [[o.name for o in s.get_outputs()] for s in sessions]
    if len(outs[0]) != len(outs[1]):
        raise MBSError(f"the {names[0]} has {len(outs[0])} output(s), the {names[1]} {len(outs[1])} — compare models "
                       "with the same outputs")
    sums = [_Sums() for _ in outs[1]]
    images = 0
    for batch in batches:
        got = sessions[0].run(None, {inputs[0]: batch})
        want = sessions[1].run(None, {inputs[1]: batch})
        for k, (g, w) in enumerate(zip(got, want)):
            if g.shape != w.shape:
                raise MBSError(f"output {outs[1][k]!r} of the {names[0]} has shape {g.shape}, the {names[1]}'s "
                               f"{w.shape} — compare models whose outputs match in shape")
            sums[k].add(g, w)
        images += len(batch)
    if images == 0:
        raise MBSError("no images to compare the models on — pass data with at least one image")
    return Fidelity(images, tuple(s.result(n, images) for s, n in zip(sums, outs[1])))


def compare(model: Any, reference: Any, data: Any, *, batch_size: int = 64, provider: str = "cpu",
            input_shape: tuple[int, ...] | None = None, preprocess: str | None = None,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            max_images: int | None = None, where: str | None = None) -> Fidelity:
    """Fidelity of ``model`` to ``reference`` (paths, protos or loaded models with the same input) on
    ``data`` — any images :func:`~onnxmbs.data.calibration.open_calibration` reads, labels not needed —
    normalised by the one rule for ``model`` (``where``: how messages name it; default its path)."""
    from onnxmbs.data.calibration import open_calibration
    from onnxmbs.data.normalisation import resolve_normalisation
    from onnxmbs.graph.load import LoadedModel, load_model
    from onnxmbs.runtime.session import choose_provider
    from onnxmbs.stats.accuracy import runnable

    loaded = model if isinstance(model, LoadedModel) else load_model(model, input_shape=input_shape)
    ref = reference if isinstance(reference, LoadedModel) else load_model(reference, input_shape=loaded.input.shape)
    if tuple(ref.input.shape[1:]) != tuple(loaded.input.shape[1:]):
        raise MBSError(f"the reference {ref.path} takes input {ref.input.shape}, {loaded.path} takes "
                       f"{loaded.input.shape} — compare models with the same input")
    norm = resolve_normalisation(loaded.metadata, preprocess, mean=mean, std=std, where=where or loaded.path)
    fixed = None if loaded.batch_dynamic else loaded.input.shape[0]
    calib = open_calibration(data, shape=loaded.input.shape, layout=loaded.input.layout, preprocess=norm,
                             max_images=max_images, batch_size=fixed or batch_size)
    batches = (b for b in calib.batches() if fixed is None or len(b) == fixed)
    return fidelity(runnable(loaded), runnable(ref), batches, provider=choose_provider(provider),
                    names=(f"model {loaded.path}", f"reference {ref.path}"))
