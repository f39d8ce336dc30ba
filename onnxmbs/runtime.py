"""The one way onnxmbs opens an onnxruntime session (imported lazily: onnxruntime is heavy)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def open_session(model: Any, *, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                 inter_threads: int | None = None, flush_denormals: bool = False) -> Any:
    """An ``InferenceSession`` of ``model`` (a ModelProto, serialized bytes or a path), quiet unless it fails.

    ``threads``/``inter_threads`` fix the thread pools (timings); ``flush_denormals`` treats
    denormal floats as zero (exact counting is unaffected: it compares with zero).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if flush_denormals:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if threads:
        options.intra_op_num_threads = threads
    if inter_threads:
        options.inter_op_num_threads = inter_threads
    source = str(model) if isinstance(model, (str, Path)) else model
    if hasattr(source, "SerializeToString"):
        source = source.SerializeToString()
    return ort.InferenceSession(source, options, providers=list(providers))


#: how close onnxruntime's output must be to the framework's (an export check, a rewritten graph)
RTOL, ATOL = 1e-3, 1e-4


def outputs_close(got: Any, expected: Any) -> bool:
    """Same shape and ``|got − expected| ≤ RTOL·|expected| + ATOL·max(1, max|expected|)`` everywhere.

    The absolute part grows with the output's scale: a deep net with random weights can have logits
    in the thousands, where float reordering alone moves a logit near zero by more than 1e-4."""
    import numpy as np

    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return False
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    return bool(np.allclose(got, expected, rtol=RTOL, atol=ATOL * scale))
