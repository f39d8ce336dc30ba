"""INT8 for deployment: static quantization of the compact model, calibrated on the user's images.

onnxruntime's quantizer (``onnxruntime.quantization.quantize_static``) in QDQ format, weights
int8 per output channel, activations uint8, ranges calibrated on ``--data`` read through the
same loaders and the same normalisation rule as the statistics pass (:func:`open_batches`).

Why these settings (measured on the embedded ResNet-20, docs/deployment.md): uint8 activations
run 1.5× faster than fp32 on x86 CPUs without VNNI where int8 activations ran 1.8× *slower*,
at the same held-out accuracy; per-channel weights keep thin, cut layers exact enough; min-max
calibration matched percentile and entropy in accuracy and is 3–4× faster to calibrate, so it is
the default (``method`` chooses another).

The quantized model is checked before anyone sees it: the onnx checker, an onnxruntime run on a
sample batch, finite outputs with the original's shapes. A model the quantizer cannot handle is one
:class:`MBSError` and nothing is written.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxmbs.compact.activations import open_batches
from onnxmbs.errors import MBSError
from onnxmbs.graph.load import LoadedModel
from onnxmbs.runtime.session import first_line, make_session
from onnxmbs.stats.measure import CalibrationOptions

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
FORMATS = ("int8",)
DEFAULT_IMAGES = 256  # calibration images when --max-images is not given


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize: the calibration images (``data``) and the range calibration ``method``."""

    data: CalibrationOptions
    method: str = "minmax"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MBSError(f"calibration method {self.method!r} is not one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class Quantized:
    """The INT8 model and how it was made."""

    model: onnx.ModelProto
    images: int
    method: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"format": "QDQ", "weights": "int8, per channel", "activations": "uint8",
                "calibration": self.method, "images": self.images, "seconds": round(self.seconds, 3),
                "quantizer": "onnxruntime.quantization.quantize_static"}


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our batches (at most ``limit`` images)."""

    def __init__(self, batches: Iterator[np.ndarray], input_name: str, limit: int) -> None:
        self.batches, self.input_name, self.limit, self.images = batches, input_name, limit, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.images >= self.limit:
            return None
        batch = next(self.batches, None)
        if batch is None:
            return None
        batch = batch[:self.limit - self.images]
        self.images += len(batch)
        return {self.input_name: batch}

    def rewind(self) -> None:  # part of the protocol; one pass is all the calibrators here need
        raise NotImplementedError


def quantize_int8(model: onnx.ModelProto, loaded: LoadedModel, options: QuantizeOptions) -> Quantized:
    """Static INT8 quantization of ``model`` (the compact model of ``loaded``), checked."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as exc:  # pragma: no cover - every onnxruntime wheel ships it
        raise MBSError(f"onnxruntime's quantizer is not available ({exc}) — install onnxruntime >= 1.16") from None
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options.method]
    limit = options.data.max_images or DEFAULT_IMAGES
    reader = _Reader(open_batches(loaded, options.data)(), loaded.input.name, limit)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".onnxmbs-int8.") as tmp:
        source, target = _prepared(model, Path(tmp)), Path(tmp) / "int8.onnx"
        _run_quantizer(lambda: quantize_static(
            str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options={"CalibTensorRangeSymmetric": False}))
        if reader.images == 0:
            raise MBSError("no calibration images reached the quantizer — pass --data with at least one image")
        quantized = onnx.load(str(target))
    check_quantized(quantized, model, loaded)
    seconds = time.perf_counter() - began
    logger.info("quantized to INT8 on %d images (%s) in %.1f s", reader.images, options.method, seconds)
    return Quantized(quantized, reader.images, options.method, seconds)


def _prepared(model: onnx.ModelProto, folder: Path) -> Path:
    """The model written for the quantizer after its own pre-processing (shape inference, graph
    optimisation: ``quant_pre_process``); written as it is where that step fails."""
    raw, ready = folder / "fp32.onnx", folder / "fp32.pre.onnx"
    onnx.save_model(model, str(raw))
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        _run_quiet(lambda: quant_pre_process(str(raw), str(ready), skip_symbolic_shape=True))
        return ready
    except Exception as exc:  # noqa: BLE001 - the quantizer works without it, only less well
        logger.debug("quantizer pre-processing skipped: %s", first_line(exc))
        return raw


def _run_quiet(call: Callable[[], Any]) -> Any:
    """``call()`` with the quantizer's prints and root-logger warnings kept out of the user's output."""
    import contextlib
    import io

    root = logging.getLogger()
    quiet = logging.Filter()
    quiet.filter = lambda record: record.name != "root"  # the quantizer logs through the root logger
    for handler in root.handlers:
        handler.addFilter(quiet)
    root.addFilter(quiet)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return call()
    finally:
        root.removeFilter(quiet)
        for handler in root.handlers:
            handler.removeFilter(quiet)


def _run_quantizer(call: Callable[[], None]) -> None:
    try:
        _run_quiet(call)
    except MBSError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; all mean it cannot handle the model
        raise MBSError(f"onnxruntime's quantizer cannot handle this model ({first_line(exc)}) — nothing was "
                       "written; compact without --quantize, or report the model") from None


def check_quantized(quantized: onnx.ModelProto, model: onnx.ModelProto, loaded: LoadedModel) -> None:
    """The checker, an onnxruntime run on a sample batch, finite outputs of the fp32 model's shapes."""
    try:
        onnx.checker.check_model(quantized)
    except Exception as exc:  # noqa: BLE001
        raise MBSError(f"the INT8 model fails the onnx checker ({first_line(exc)}) — nothing was written; "
                       "compact without --quantize, or report the model") from None
    shape = tuple(int(d) for d in loaded.input.shape)
    x = np.random.default_rng(0).random((shape[0], *shape[1:]), dtype=np.float32)
    want = make_session(model, "CPUExecutionProvider").run(None, {loaded.input.name: x})
    got = make_session(quantized, "CPUExecutionProvider").run(None, {loaded.input.name: x})
    if [g.shape for g in got] != [w.shape for w in want]:
        raise MBSError(f"the INT8 model's outputs have shapes {[g.shape for g in got]}, the fp32 model's "
                       f"{[w.shape for w in want]} — nothing was written; please report the model")
    if not all(np.all(np.isfinite(g)) for g in got):
        raise MBSError("the INT8 model gives non-finite outputs — nothing was written; calibrate on more "
                       "images (--max-images) or compact without --quantize")
