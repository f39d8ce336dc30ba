"""Accuracy on labelled data with onnxruntime: top-1, top-5 (>= 5 classes), agreement with a reference.

The model's first output holds the class scores (logits or probabilities, ``(N, classes)`` or
anything that flattens to it per image). Batches are run as they come; a model whose batch size
is fixed in the graph is fed batches of exactly that size, the last one padded and trimmed.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxmbs.errors import MBSError
from onnxmbs.graph.load import LoadedModel, load_model
from onnxmbs.runtime.session import choose_provider, make_session
from onnxmbs.data.labelled import LabelledData, open_labelled
from onnxmbs.data.normalisation import resolve_normalisation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accuracy:
    """What one evaluation measured; accuracies are fractions in [0, 1]."""

    images: int
    classes: int
    top1: float
    top5: float | None = None
    agreement: float | None = None  # fraction of images where the top-1 equals the reference's

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Accuracy:
        return cls(**{k: data[k] for k in ("images", "classes", "top1", "top5", "agreement")})


def runnable(loaded: LoadedModel) -> onnx.ModelProto:
    """The loaded model as onnxruntime should run it: a dynamic batch again where the file had one."""
    model = loaded.model
    if loaded.batch_dynamic:
        model = copy.deepcopy(model)
        gin = next(i for i in model.graph.input if i.name == loaded.input.name)
        gin.type.tensor_type.shape.dim[0].dim_param = "N"
    return model


@dataclass(frozen=True)
class Predictor:
    """An onnxruntime session returning the class scores of a batch of images."""

    session: Any = field(repr=False)
    input: str
    output: str
    fixed_batch: int | None  # the graph's batch size where it is not dynamic

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, classes) float scores for images ``x``."""
        if self.fixed_batch is None or len(x) == self.fixed_batch:
            return self._run(x)
        parts = []
        for start in range(0, len(x), self.fixed_batch):
            chunk = x[start:start + self.fixed_batch]
            pad = self.fixed_batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            parts.append(self._run(chunk)[:len(chunk) - pad])
        return np.concatenate(parts)

    def _run(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output], {self.input: np.ascontiguousarray(x, dtype=np.float32)})
        return out.reshape(len(x), -1)


def open_predictor(loaded: LoadedModel, *, provider: str = "cpu", threads: int | None = None,
                   model: onnx.ModelProto | None = None) -> Predictor:
    """A predictor for ``loaded`` (or for ``model``, a variant of it with the same input)."""
    proto = model if model is not None else runnable(loaded)
    session = make_session(proto, choose_provider(provider), threads=threads)
    output = proto.graph.output[0].name
    return Predictor(session, loaded.input.name, output, None if loaded.batch_dynamic else loaded.input.shape[0])


def num_classes(loaded: LoadedModel) -> int:
    """Class scores per image of the model's first output (from its inferred shape)."""
    shape = loaded.shapes.get(loaded.graph.output[0].name)
    if not shape or len(shape) < 2:
        raise MBSError(f"cannot tell the class count of {loaded.path}: its first output "
                       f"'{loaded.graph.output[0].name}' has no known (N, classes) shape — export a classifier "
                       "whose first output holds the class scores")
    return math.prod(shape[1:])


def top1_top5(scores: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """How many images have their label as the best score, and among the 5 best."""
    top1 = int((scores.argmax(axis=1) == labels).sum())
    if scores.shape[1] < 5:
        return top1, 0
    best5 = np.argpartition(-scores, 4, axis=1)[:, :5]
    return top1, int((best5 == labels[:, None]).any(axis=1).sum())


def predictions(predictor: Predictor, data: LabelledData, *, batch_size: int = 64) -> np.ndarray:
    """Every image's class scores, (N, classes)."""
    return np.concatenate([predictor.scores(x) for x, _ in data.batches(batch_size)])


def evaluate(model: str | Path | onnx.ModelProto | LoadedModel, data: LabelledData | object, *,
             reference: str | Path | onnx.ModelProto | LoadedModel | None = None, batch_size: int = 64,
             provider: str = "cpu", input_shape: tuple[int, ...] | None = None) -> Accuracy:
    """Top-1/top-5 accuracy of ``model`` on ``data``; with ``reference``, the agreement of top-1s.

    ``data``: :class:`LabelledData` (used as it is) or anything :func:`open_labelled` reads, normalised
    by the one rule for ``model`` (its metadata, else imagenet).
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, input_shape=input_shape)
    if not isinstance(data, LabelledData):
        data = open_labelled(data, shape=loaded.input.shape, layout=loaded.input.layout,
                             preprocess=resolve_normalisation(loaded.metadata, where=loaded.path))
    classes = num_classes(loaded)
    data.check_classes(classes)
    scores = predictions(open_predictor(loaded, provider=provider), data, batch_size=batch_size)
    top1, top5 = top1_top5(scores, data.y)
    agreement = None
    if reference is not None:
        agreement = _agreement(scores, reference, loaded, data, batch_size=batch_size, provider=provider)
    n = len(data)
    return Accuracy(n, classes, top1 / n, top5 / n if classes >= 5 else None, agreement)


def _agreement(scores: np.ndarray, reference, loaded: LoadedModel, data: LabelledData, *, batch_size: int,
               provider: str) -> float:
    ref = reference if isinstance(reference, LoadedModel) else load_model(reference, input_shape=loaded.input.shape)
    if ref.input.shape[1:] != loaded.input.shape[1:] or ref.input.layout != loaded.input.layout:
        raise MBSError(f"the reference {ref.path} takes {ref.input.shape[1:]} {ref.input.layout} images, the model "
                       f"{loaded.input.shape[1:]} {loaded.input.layout} — compare models with the same input")
    if num_classes(ref) != scores.shape[1]:
        raise MBSError(f"the reference {ref.path} has {num_classes(ref)} outputs, the model {scores.shape[1]} — "
                       "compare models over the same classes")
    ref_scores = predictions(open_predictor(ref, provider=provider), data, batch_size=batch_size)
    return float((ref_scores.argmax(axis=1) == scores.argmax(axis=1)).mean())
