"""Apply an MBS plan to your own model: PyTorch ``nn.Module`` or Keras model in, compact model out.

    from onnxmbs.adapters import apply_plan
    compact = apply_plan(my_model, "plan.json", torch.rand(1, 3, 32, 32))   # PyTorch
    compact = apply_plan(my_keras_model, "plan.json")                      # Keras

The model is never modified; the returned one has the plan's compact widths, is verified
with a forward pass, and is freshly initialised (``init="scratch"``, the paper's way) or
keeps the surviving channels' weights (``init="inherit"``). Train it with your own loop
(or :mod:`onnxmbs.train`).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from onnxmbs.errors import MBSError

__all__ = ["apply_plan", "apply_plan_keras", "apply_plan_torch", "folded_params", "import_keras"]


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


def import_keras(*, tf2onnx: bool = False) -> Any:
    """``keras`` (and TensorFlow, and with ``tf2onnx`` that too) imported without TensorFlow's start-up noise.

    ``TF_CPP_MIN_LOG_LEVEL`` is set (unless the user set it) before TensorFlow loads; the lines TensorFlow
    2.x prints before its logging starts are dropped. Import errors still raise as usual.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    wanted = ["tensorflow", "keras"] + (["tf2onnx"] if tf2onnx else [])
    if any(name not in sys.modules for name in wanted):
        import importlib

        with _stderr_silenced():
            for name in wanted:
                importlib.import_module(name)
    return sys.modules["keras"]


def _is_torch(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)


def _is_keras(model: Any) -> bool:
    return any(c.__module__.startswith("keras") and c.__name__ in ("Model", "Layer") for c in type(model).__mro__)


def apply_plan(model: Any, plan: Mapping[str, Any] | str | Path, example_inputs: Any = None, *,
               init: str = "scratch", onnx_path: str | Path | None = None, **options: Any) -> Any:
    """The compact version of ``model`` under ``plan`` (a plan dict or a plan JSON path).

    PyTorch needs ``example_inputs`` (a tensor or tuple the model accepts); Keras models know
    their input shape. ``onnx_path``: the ONNX file the plan was made from, when the plan's
    ``model.path`` does not reach it from here (it only helps matching layers by name).
    Other keyword options go to the framework adapter (Keras: ``custom_objects``).
    """
    if _is_torch(model):
        if example_inputs is None:
            raise MBSError("a PyTorch model needs example_inputs — pass e.g. torch.rand(1, 3, 32, 32)")
        from onnxmbs.adapters.torch_adapter import apply_plan_torch

        return apply_plan_torch(model, plan, example_inputs, init=init, onnx_path=onnx_path, **options)
    if _is_keras(model):
        from onnxmbs.adapters.keras_adapter import apply_plan_keras

        return apply_plan_keras(model, plan, init=init, onnx_path=onnx_path, **options)
    raise MBSError(f"cannot apply a plan to a {type(model).__name__} — pass a torch.nn.Module or a Keras model")


def apply_plan_torch(*args: Any, **kwargs: Any) -> Any:
    """See :func:`onnxmbs.adapters.torch_adapter.apply_plan_torch`."""
    from onnxmbs.adapters.torch_adapter import apply_plan_torch as impl

    return impl(*args, **kwargs)


def apply_plan_keras(*args: Any, **kwargs: Any) -> Any:
    """See :func:`onnxmbs.adapters.keras_adapter.apply_plan_keras`."""
    from onnxmbs.adapters.keras_adapter import apply_plan_keras as impl

    return impl(*args, **kwargs)


def folded_params(model: Any, example_inputs: Any = None) -> int:
    """Parameters of ``model`` counted as the plan counts its ONNX export (BatchNorm after a conv folded)."""
    if _is_torch(model):
        from onnxmbs.adapters.torch_adapter import folded_params as impl

        return impl(model, example_inputs)
    from onnxmbs.adapters.keras_adapter import folded_params as impl_keras

    return impl_keras(model)
