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
