"""The compact model measured, not assumed: top-1 of original and compact on labelled images, and how
often they agree (:mod:`onnxmbs.stats.accuracy`). Measure on images the reconstruction did not see.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from onnxmbs.graph.analysis import Analysis
from onnxmbs.stats.accuracy import Accuracy, evaluate
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
