"""The deployable model: the compact model quantized to INT8, checked, written beside the compact file.

``onnxmbs compact MODEL --plan P -o c.onnx --quantize int8 --data D`` writes ``c.onnx`` (fp32, for
fine-tuning) and ``c.int8.onnx`` (for deployment) with its record ``c.int8.onnx.json``: how it was
made (quantizer settings, calibration images and their normalisation), the file sizes, the latency
of the original fp32, the compact fp32 and the compact INT8 model measured in one run, and the
accuracy of all three on labelled images (``--eval-data``) or, without labels, the fidelity of the
compact and INT8 outputs to the original's (on the calibration images).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from onnxmbs.compact.activations import open_batches
from onnxmbs.compact.check import median_latencies
from onnxmbs.compact.quantize import Quantized, QuantizeOptions, quantize_int8
from onnxmbs.compact.record import INT8_SCHEMA, VARIANTS, Int8Record
from onnxmbs.data.labelled import open_labelled
from onnxmbs.data.normalisation import Normalisation
from onnxmbs.files import write_atomic, write_json
from onnxmbs.graph.load import LoadedModel
from onnxmbs.stats.accuracy import Accuracy, evaluate, runnable
from onnxmbs.stats.fidelity import Fidelity, fidelity
from onnxmbs.stats.measure import CalibrationOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    """The INT8 model and what was measured of it against the fp32 models."""

    path: str
    source: str  # the compact fp32 file it was quantized from
    quantized: Quantized
    normalisation: Normalisation
    bytes: dict[str, int]  # per variant
    latency_ms: dict[str, float]  # per variant, one run
    latency: dict[str, Any]  # batch, repeats, threads, provider
    accuracy: dict[str, Accuracy] | None = None  # per variant, with labels
    fidelity: dict[str, Fidelity] | None = None  # compact / int8 vs original, without labels
    fidelity_data: str = "the calibration images"  # what the fidelity was measured on

    def write(self, *, compact_bytes: int | None = None) -> Deployment:
        """Write the INT8 model and its record ``<path>.json`` atomically; ``compact_bytes``: the compact
        file's size as written."""
        done = self if compact_bytes is None else replace(self, bytes={**self.bytes, "compact": compact_bytes})
        write_atomic(Path(self.path), self.quantized.model.SerializeToString())
        write_json(Path(self.path + ".json"), done.record())
        logger.info("wrote %s (INT8, x%.2f faster than the original)", self.path, done.speedup)
        return done

    @property
    def speedup(self) -> float:
        return self.latency_ms["original"] / self.latency_ms["int8"] if self.latency_ms["int8"] > 0 else float("nan")

    def record(self) -> Int8Record:
        fid = self.fidelity
        return Int8Record(
            schema=INT8_SCHEMA, made_by="onnxmbs compact --quantize int8", model=self.path, source=self.source,
            quantization=self.quantized.to_json(), normalisation=self.normalisation, bytes=dict(self.bytes),
            latency={**self.latency, **{f"{k}_ms": round(v, 4) for k, v in self.latency_ms.items()}},
            accuracy=None if self.accuracy is None else {k: v.to_json() for k, v in self.accuracy.items()},
            fidelity=None if fid is None else {"data": self.fidelity_data,
                                               **{k: v.to_json() for k, v in fid.items()}})


def measure_int8(loaded: LoadedModel, compact: onnx.ModelProto, output: str | Path, options: QuantizeOptions, *,
                 original_bytes: bytes, compact_path: str | Path, original_size: int,
                 evaluation: CalibrationOptions | None = None, classes: Any = None, repeats: int = 5,
                 threads: int = 1) -> Deployment:
    """Quantize ``compact`` (of the original ``loaded``) and measure it; nothing is written yet
    (:meth:`Deployment.write`), so a failure leaves no file behind."""
    quantized = quantize_int8(compact, loaded, options)
    data = quantized.model.SerializeToString()
    batch = loaded.input.shape[0]
    times = median_latencies((original_bytes, compact.SerializeToString(), data), loaded.input, batch=batch,
                             repeats=max(repeats, 1), threads=threads)
    return Deployment(
        path=str(output), source=str(compact_path), quantized=quantized,
        normalisation=options.data.normalisation(loaded),
        bytes={"original": original_size, "compact": compact.ByteSize(), "int8": len(data)},
        latency_ms=dict(zip(VARIANTS, times)),
        latency={"provider": "CPUExecutionProvider", "batch": batch, "repeats": max(repeats, 1), "threads": threads},
        **_quality(loaded, compact, quantized.model, options, evaluation, classes))


def _quality(loaded: LoadedModel, compact: onnx.ModelProto, int8: onnx.ModelProto, options: QuantizeOptions,
             evaluation: CalibrationOptions | None, classes: Any) -> dict[str, Any]:
    """Accuracy of the three on labelled ``--eval-data``; else the fidelity to the original on the unlabelled
    ``--eval-data``, or on the calibration images without it."""
    from onnxmbs.data.labelled import has_labels

    if evaluation is not None and has_labels(evaluation.data):
        labelled = open_labelled(evaluation.data, shape=loaded.input.shape, layout=loaded.input.layout,
                                 preprocess=evaluation.normalisation(loaded), classes=classes,
                                 max_images=evaluation.max_images)
        shape = loaded.input.shape
        return {"accuracy": {
            "original": evaluate(loaded, labelled, batch_size=evaluation.batch_size),
            "compact": evaluate(compact, labelled, reference=loaded, batch_size=evaluation.batch_size,
                                input_shape=shape),
            "int8": evaluate(int8, labelled, reference=loaded, batch_size=evaluation.batch_size, input_shape=shape)}}
    reference = runnable(loaded)
    batches = open_batches(loaded, evaluation if evaluation is not None else options.data)
    return {"fidelity": {"compact": fidelity(compact, reference, batches(), names=("compact model", "original")),
                         "int8": fidelity(int8, reference, batches(), names=("INT8 model", "original"))},
            "fidelity_data": str(evaluation.data) if evaluation is not None else "the calibration images"}
