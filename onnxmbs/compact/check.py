"""Compact surgery, part 5 — prove the result before anyone writes it, and time it honestly.

:func:`verify` runs ``onnx.checker.check_model(full_check=True)`` (strict shape inference
included), runs original and compact once in onnxruntime on the same random batch, and
compares output names and shapes; then it counts the compact model's parameters and MACs
with the same rules as the planner (:func:`onnxmbs.graph.costs.count_costs`).

:func:`measure_latency` times both models in onnxruntime's CPU provider on the same batch:
one warm-up run each, then ``repeats`` alternating runs, median wall time per model.
"""
from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxmbs.graph.costs import Costs, count_costs
from onnxmbs.errors import MBSError
from onnxmbs.runtime.session import open_session
from onnxmbs.graph.load import ModelInput, load_model

logger = logging.getLogger(__name__)

PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Latency:
    original_ms: float
    compact_ms: float
    batch: int
    repeats: int
    threads: int
    provider: str = PROVIDER

    @property
    def speedup(self) -> float:
        return self.original_ms / self.compact_ms if self.compact_ms > 0 else float("nan")


def _session(data: bytes, *, threads: int):
    return open_session(data, providers=[PROVIDER], threads=threads, inter_threads=1)


def sample(model_input: ModelInput, *, batch: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    shape = (batch, *model_input.shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _input_dtype(model: onnx.ModelProto, name: str):
    for gin in model.graph.input:
        if gin.name == name and gin.type.tensor_type.elem_type:
            return onnx.helper.tensor_dtype_to_np_dtype(gin.type.tensor_type.elem_type)
    return np.float32


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MBSError(f"the compact model fails onnx.checker ({first[:200]}) — nothing was written; "
                       "this is a bug in the channel surgery, please report the model") from None


def _run(data: bytes, name: str, x: np.ndarray, what: str) -> list[np.ndarray]:
    try:
        sess = _session(data, threads=1)
        return sess.run(None, {name: x})
    except Exception as exc:  # onnxruntime raises many types
        text = " ".join(str(exc).split())
        node = re.search(r"Name:'([^']*)'", text)
        where = f" at node '{node.group(1)}'" if node else ""
        detail = text.split("Status Message:")[-1].split("onnxruntime::")[0].strip()[-160:]
        raise MBSError(f"the {what} model does not run in onnxruntime{where} ({detail}) — nothing was written; "
                       "please report the model") from None


def _check_shapes(loaded, expected: Mapping[str, tuple[int, ...]]) -> None:
    producer = {o: n for n in loaded.graph.node for o in n.output}
    for tensor, shape in expected.items():
        got = loaded.shapes.get(tensor)
        if got is not None and tuple(got) != tuple(shape):
            node = producer.get(tensor)
            where = f"{node.op_type} '{node.name}'" if node is not None else "the graph"
            raise MBSError(f"tensor '{tensor}' written by {where} has shape {tuple(got)} in the compact model, "
                           f"expected {tuple(shape)} — its shape is computed in a way onnxmbs cannot update; "
                           "nothing was written; simplify the model (onnxsim) or freeze this group")


def verify(compact: onnx.ModelProto, original: bytes, model_input: ModelInput, *, batch: int,
           input_shape: tuple[int, ...] | None, expected: Mapping[str, tuple[int, ...]]) -> Costs:
    """Checker, every channel tensor at its expected compact shape, an onnxruntime run with the
    original's output shapes; returns the compact model's counts."""
    _check(compact)
    data = compact.SerializeToString()
    x = sample(model_input, batch=batch, dtype=_input_dtype(compact, model_input.name))
    want = _run(original, model_input.name, x, "original")
    got = _run(data, model_input.name, x, "compact")
    if [o.shape for o in want] != [o.shape for o in got]:
        raise MBSError(f"the compact model's outputs have shapes {[o.shape for o in got]}, the original's "
                       f"{[o.shape for o in want]} — nothing was written; please report the model")
    loaded = load_model(compact, input_shape=input_shape)
    _check_shapes(loaded, expected)
    return count_costs(loaded.graph, loaded.shapes, loaded.constants, batch=loaded.input.shape[0])


def measure_latency(original: bytes, compact: bytes, model_input: ModelInput, *, batch: int, repeats: int = 5,
                    threads: int = 1) -> Latency:
    """Median onnxruntime CPU latency of both models on the same batch (alternating runs)."""
    original_ms, compact_ms = median_latencies((original, compact), model_input, batch=batch, repeats=repeats,
                                               threads=threads)
    result = Latency(original_ms=original_ms, compact_ms=compact_ms, batch=batch, repeats=max(repeats, 1),
                     threads=threads)
    logger.info("latency: original %.3f ms, compact %.3f ms (x%.2f)", result.original_ms, result.compact_ms,
                result.speedup)
    return result


def median_latencies(models: Sequence[bytes], model_input: ModelInput, *, batch: int, repeats: int = 5,
                     threads: int = 1) -> tuple[float, ...]:
    """Median onnxruntime CPU latency (ms) of each model on the same batch, measured in one run: one warm-up
    each, then the models take turns, so a noisy moment hits them all alike."""
    x = sample(model_input, batch=batch)
    sessions = [_session(m, threads=threads) for m in models]
    feeds = [{s.get_inputs()[0].name: x.astype(_np_type(s))} for s in sessions]
    times: list[list[float]] = [[] for _ in sessions]
    for sess, feed in zip(sessions, feeds):
        sess.run(None, feed)  # warm-up
    for _ in range(max(repeats, 1)):
        for k, (sess, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            sess.run(None, feed)
            times[k].append((time.perf_counter() - start) * 1e3)
    return tuple(statistics.median(t) for t in times)


def _np_type(sess) -> type:
    kind = sess.get_inputs()[0].type  # e.g. "tensor(float)"
    return {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(kind, np.float32)
