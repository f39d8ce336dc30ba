"""PyTorch and Keras as onnxmbs meets them: which one a model is, and Keras imported without TensorFlow's
start-up noise. zoo/, train/ and adapters/ share this; neither framework is imported here until asked for.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from onnxmbs.errors import MBSError

#: framework -> (what it is called, the extra that installs it, the modules it needs)
FRAMEWORKS = {"torch": ("PyTorch", "torch", ("torch",)),
              "keras": ("Keras (TensorFlow)", "keras", ("tensorflow", "keras"))}
#: a module a framework's code imports -> that framework (tf2onnx: Keras models are exported with it)
_OWNER = {"torch": "torch", "torchvision": "torch", "onnxscript": "torch",
          "tensorflow": "keras", "keras": "keras", "tf2onnx": "keras"}


def framework_needed(what: str, framework: str) -> MBSError:
    """The one line for a missing framework: what needs it and the extra that installs it."""
    name, extra, _ = FRAMEWORKS[framework]
    return MBSError(f"{what} needs {name}, which is not installed: pip install 'onnxmbs[{extra}]'")


def require_framework(framework: str, what: str, *, export: bool = False) -> None:
    """Fail now, before any work, when ``framework``'s packages (with ``export`` for Keras, tf2onnx too)
    cannot be imported."""
    import importlib.util

    modules = FRAMEWORKS[framework][2] + (("tf2onnx",) if export and framework == "keras" else ())
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise framework_needed(what, framework)


def missing_framework(exc: BaseException) -> MBSError | None:
    """An ImportError of PyTorch, TensorFlow, Keras or tf2onnx as the one line naming the extra; else None."""
    if not isinstance(exc, ImportError):
        return None
    module = (exc.name or "").split(".")[0]
    if module not in _OWNER:
        return None
    return framework_needed(f"this command (it imports {module})", _OWNER[module])


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Process-level stderr to /dev/null: TensorFlow's C++ start-up lines (oneDNN, absl) bypass Python."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


#: Keras 3 UserWarnings about calls onnxmbs makes on the user's behalf (not the user's to act on)
KERAS_WARNINGS = (r"The structure of `inputs` doesn't match the expected structure",)


def _ignore_keras_warnings() -> None:
    """Keras' "structure of `inputs` doesn't match" UserWarning, raised when a functional model built with
    ``inputs=[x]`` (as ``keras.Model(model.inputs, ...)`` does) is called with one array, is not shown."""
    for message in KERAS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=r"keras(\.|$)")


def import_keras(*, tf2onnx: bool = False) -> Any:
    """``keras`` (and TensorFlow, and with ``tf2onnx`` that too) imported without TensorFlow's start-up noise.

    ``TF_CPP_MIN_LOG_LEVEL`` is set (unless the user set it) before TensorFlow loads; the lines TensorFlow
    2.x prints before its logging starts are dropped, and so is Keras' inputs-structure UserWarning
    (:data:`KERAS_WARNINGS`). Import errors still raise as usual.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _ignore_keras_warnings()
    wanted = ["tensorflow", "keras"] + (["tf2onnx"] if tf2onnx else [])
    if any(name not in sys.modules for name in wanted):
        with _stderr_silenced():
            for name in wanted:
                importlib.import_module(name)
    return sys.modules["keras"]


def is_torch(model: Any) -> bool:
    """``model`` is a ``torch.nn.Module`` (torch itself is not imported to tell)."""
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)


def is_keras(model: Any) -> bool:
    """``model`` is a Keras model or layer (Keras itself is not imported to tell)."""
    return any(c.__module__.startswith("keras") and c.__name__ in ("Model", "Layer") for c in type(model).__mro__)


def framework_of(model: Any) -> str:
    """``"torch"`` or ``"keras"``, from the model's class hierarchy."""
    if is_torch(model):
        return "torch"
    if is_keras(model):
        return "keras"
    raise MBSError(f"{type(model).__name__} is neither a torch.nn.Module nor a Keras model — return one of those")
