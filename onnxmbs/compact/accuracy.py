"""The compact model measured, not assumed: top-1 of original and compact on labelled images, and how
often they agree (:mod:`onnxmbs.stats.accuracy`); on images without labels (a detector's, a
segmenter's) the fidelity of the compact model's outputs to the original's (:mod:`onnxmbs.stats.fidelity`).
Measure on images the reconstruction did not see.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from onnxmbs.graph.analysis import Analysis
from onnxmbs.stats.accuracy import Accuracy, evaluate
from onnxmbs.stats.fidelity import Fidelity, compare
from onnxmbs.data.labelled import open_labelled
from onnxmbs.stats.measure import CalibrationOptions


@dataclass(frozen=True)
class AccuracyCheck:
    data: str  # where the labelled images came from
    original: Accuracy
    compact: Accuracy  # with ``agreement``: share of images where compact and original predict the same class

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "original": self.original.to_json(), "compact": self.compact.to_json()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AccuracyCheck:
        return cls(doc["data"], Accuracy.from_json(doc["original"]), Accuracy.from_json(doc["compact"]))


def check_accuracy(analysis: Analysis, compact: onnx.ModelProto, options: CalibrationOptions, *,
                   classes: Any = None) -> AccuracyCheck:
    """Top-1 (top-5) of the original (``analysis``) and of ``compact`` on ``options.data`` (labelled)."""
    loaded = analysis.loaded
    data = open_labelled(options.data, shape=loaded.input.shape, layout=loaded.input.layout,
                         preprocess=options.normalisation(loaded),
                         classes=classes, max_images=options.max_images)
    provider = "cpu" if options.provider == "auto" else options.provider
    original = evaluate(loaded, data, batch_size=options.batch_size, provider=provider)
    ours = evaluate(compact, data, reference=loaded, batch_size=options.batch_size, provider=provider,
                    input_shape=loaded.input.shape)
    return AccuracyCheck(data.source, original, ours)


@dataclass(frozen=True)
class FidelityCheck:
    data: str  # where the (unlabelled) images came from
    fidelity: Fidelity  # of the compact model's outputs to the original's

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, **self.fidelity.to_json()}


def check_fidelity(analysis: Analysis, compact: onnx.ModelProto, options: CalibrationOptions) -> FidelityCheck:
    """Per output: relative L2 error, cosine and max error of ``compact`` to the original on ``options.data``."""
    loaded = analysis.loaded
    provider = "cpu" if options.provider == "auto" else options.provider
    fid = compare(compact, loaded, options.data, batch_size=options.batch_size, provider=provider,
                  input_shape=loaded.input.shape, preprocess=options.preprocess, mean=options.mean, std=options.std,
                  max_images=options.max_images, where=f"the compact model of {loaded.path}")
    return FidelityCheck(str(options.data), fid)


def check_quality(analysis: Analysis, compact: onnx.ModelProto, options: CalibrationOptions, *,
                  classes: Any = None) -> AccuracyCheck | FidelityCheck:
    """Accuracy on labelled ``options.data``; fidelity to the original where it has no labels."""
    from onnxmbs.data.labelled import has_labels

    if has_labels(options.data):
        return check_accuracy(analysis, compact, options, classes=classes)
    return check_fidelity(analysis, compact, options)
