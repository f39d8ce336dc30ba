"""What a block's removal is scored by: top-1 accuracy (labels), fidelity to the original model (no
labels), or the user's own metric (``python:FILE.py:FUNCTION``).

Every measure is a number in [0, 1], higher is better, so the greedy rule and the stop rule
(``max_accuracy_drop``: the most the score may fall below the original's) read the same for all:

* ``top-1``: the share of images whose arg-max equals the label.
* ``fidelity``: ``1 − min(1, ‖y − y_ref‖₂ / ‖y_ref‖₂)``, the relative L2 error of the model's first
  output to the **original** model's, taken over all elements and images (the error ``evaluate
  --reference`` reports); 1 for the original itself. ``--max-fidelity-loss E`` stops before the
  relative error passes E.
* a user metric: ``FUNCTION(outputs, targets)`` with ``outputs = [first output over all images]``
  and the data file's other arrays as targets (:mod:`onnxmbs.stats.metric`); it must return a
  number in [0, 1] (mIoU, mAP, pixel accuracy; a loss L can be given as 1 / (1 + L)).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxmbs.errors import MBSError

TOP1, FIDELITY = "top-1", "fidelity"


@dataclass(frozen=True)
class Quality:
    """How a model is scored; ``tally()`` starts an accumulator over batches."""

    kind: str  # TOP1, FIDELITY or the metric's spec
    reference: onnx.ModelProto | None = field(default=None, repr=False)  # fidelity: the original model
    metric: Any = field(default=None, repr=False)  # onnxmbs.stats.metric.Metric
    targets: Mapping[str, np.ndarray] | None = field(default=None, repr=False)
    # the reference's outputs per batch, computed once per data and batching (the original never changes)
    cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def needs_reference(self) -> bool:
        return self.kind == FIDELITY

    @property
    def needs_labels(self) -> bool:
        return self.kind == TOP1

    def tally(self) -> Tally:
        if self.kind == TOP1:
            return _Top1()
        if self.kind == FIDELITY:
            return _Fidelity()
        return _Collected(self.metric, self.targets or {})


def top1() -> Quality:
    return Quality(TOP1)


def fidelity_to(original: onnx.ModelProto) -> Quality:
    return Quality(FIDELITY, reference=original)


def user_metric(spec: str, data: Any) -> Quality:
    """``python:FILE.py:FUNCTION`` on the ``.npz`` ``data``'s other arrays."""
    from onnxmbs.stats.metric import load_metric, read_targets

    return Quality(spec, metric=load_metric(spec), targets=read_targets(data))


class Tally:
    """Accumulates one model's score over batches: ``add(outputs, labels, reference, n)``."""

    def add(self, out: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None, n: int) -> None:
        raise NotImplementedError

    def value(self) -> float:
        raise NotImplementedError


class _Top1(Tally):
    def __init__(self) -> None:
        self.hits, self.n = 0, 0

    def add(self, out, labels, reference, n):
        self.hits += int((out[:n].reshape(n, -1).argmax(axis=1) == labels[:n]).sum())
        self.n += n

    def value(self) -> float:
        return self.hits / self.n if self.n else 0.0


class _Fidelity(Tally):
    def __init__(self) -> None:
        self.diff, self.ref = 0.0, 0.0

    def add(self, out, labels, reference, n):
        y, r = out[:n].astype(np.float64), reference[:n].astype(np.float64)
        if y.shape != r.shape:
            raise MBSError(f"the model's first output has shape {y.shape[1:]} per image but the original's has "
                           f"{r.shape[1:]} — fidelity compares outputs of the same shape")
        self.diff += float(np.sum((y - r) ** 2))
        self.ref += float(np.sum(r ** 2))

    def value(self) -> float:
        if self.ref == 0.0:
            return 1.0 if self.diff == 0.0 else 0.0
        return 1.0 - min(1.0, math.sqrt(self.diff / self.ref))


class _Collected(Tally):
    def __init__(self, metric: Any, targets: Mapping[str, np.ndarray]) -> None:
        self.metric, self.targets, self.parts = metric, targets, []

    def add(self, out, labels, reference, n):
        self.parts.append(np.array(out[:n]))

    def value(self) -> float:
        from onnxmbs.stats.metric import score

        value = score(self.metric, [np.concatenate(self.parts)], dict(self.targets))
        if not 0.0 <= value <= 1.0:
            raise MBSError(f"--metric {self.metric.name} returned {value:g}: block pruning needs a score in [0, 1] "
                           "(higher is better; a loss L can be returned as 1 / (1 + L))")
        return value
