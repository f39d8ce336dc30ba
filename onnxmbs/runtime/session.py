"""The one way onnxmbs opens an onnxruntime session and picks its provider (onnxruntime is imported lazily:
it is heavy)."""
from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)


def open_session(model: Any, *, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                 inter_threads: int | None = None, flush_denormals: bool = False, spinning: bool = True) -> Any:
    """An ``InferenceSession`` of ``model`` (a ModelProto, serialized bytes or a path), quiet unless it fails.

    ``threads``/``inter_threads`` fix the thread pools (timings); ``flush_denormals`` treats
    denormal floats as zero (exact counting is unaffected: it compares with zero); ``spinning=False``
    lets the pool's threads sleep between runs, for sessions whose runs alternate with numpy's own
    BLAS threads (the reconstruction: ~10 % faster on 2 cores, ``tools/bench_reconstruct.py``).
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
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, (str, Path)) else model
    if hasattr(source, "SerializeToString"):
        source = source.SerializeToString()
    return ort.InferenceSession(source, options, providers=list(providers))


def provider_session(model: Any, provider: str, *, threads: int | None = None, flush_denormals: bool = False,
                     spinning: bool = True) -> Any:
    """:func:`open_session` on ``provider`` (a full name), with CPU behind it for the ops another provider lacks."""
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return open_session(model, providers=providers, threads=threads, flush_denormals=flush_denormals,
                        spinning=spinning)


def first_line(exc: Exception) -> str:
    """An exception's first line (at most 200 characters), for a one-line error."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def make_session(model: Any, provider: str, *, threads: int | None = None, flush_denormals: bool = False,
                 spinning: bool = True) -> Any:
    """An onnxruntime session of the user's model; a model onnxruntime refuses is the user's to fix."""
    try:
        return provider_session(model, provider, threads=threads, flush_denormals=flush_denormals, spinning=spinning)
    except Exception as exc:
        raise MBSError(f"onnxruntime cannot load the model ({first_line(exc)}) — "
                       "check it runs with onnxruntime before planning") from None


# ------------------------------------------------------------ providers
def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


@functools.lru_cache(maxsize=1)
def _cuda_works() -> bool:
    """onnxruntime-gpu lists CUDA even where no GPU or CUDA library exists: try a real session, once per
    process, with onnxruntime's own error log silenced (the caller warns once)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x],
                                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                              opset_imports=[helper.make_opsetid("", 13)])
    try:
        with warnings.catch_warnings():  # onnxruntime's own "cannot create the CUDA provider" warning
            warnings.simplefilter("ignore")
            sess = open_session(probe, providers=["CUDAExecutionProvider"])
        sess.run(None, {"x": np.ones(1, np.float32)})
        return "CUDAExecutionProvider" in sess.get_providers()
    except Exception:  # missing libcudart / no device
        return False
    finally:
        ort.set_default_logger_severity(3)


@functools.lru_cache(maxsize=1)
def _warn_no_cuda() -> None:
    logger.warning("CUDA provider is listed but cannot run here (no GPU or CUDA libraries); using CPU")


def choose_provider(requested: str = "auto") -> str:
    """'auto' -> CUDA when it really works, else CPU; 'cuda'/'cpu' or a full provider name."""
    aliases = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
    name = aliases.get(requested.lower(), requested)
    if name == "auto":
        if _cuda_works():
            return "CUDAExecutionProvider"
        if "CUDAExecutionProvider" in available_providers():
            _warn_no_cuda()  # once per process (= per command), however many models it measures
        return "CPUExecutionProvider"
    if name == "CUDAExecutionProvider" and not _cuda_works():
        raise MBSError("--provider cuda: the CUDA provider cannot run on this machine — install onnxruntime-gpu "
                       "with a matching CUDA, or use --provider cpu")
    if name not in available_providers():
        raise MBSError(f"provider {requested!r} is not available; available: {', '.join(available_providers())}")
    return name


# ------------------------------------------------------------ comparing outputs
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
