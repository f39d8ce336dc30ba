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

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxmbs.errors import MBSError
from onnxmbs.runtime.frameworks import is_keras, is_torch

if TYPE_CHECKING:
    from onnxmbs.planning.document import PlanDocument

__all__ = ["adapt", "apply_plan", "apply_plan_keras", "apply_plan_torch", "count_params", "folded_params"]


def apply_plan(model: Any, plan: Mapping[str, Any] | str | Path, example_inputs: Any = None, *,
               init: str = "scratch", onnx_path: str | Path | None = None, **options: Any) -> Any:
    """The compact version of ``model`` under ``plan`` (a plan dict or a plan JSON path).

    PyTorch needs ``example_inputs`` (a tensor or tuple the model accepts); Keras models know
    their input shape. ``onnx_path``: the ONNX file the plan was made from, when the plan's
    ``model.path`` does not reach it from here (it only helps matching layers by name).
    ``init="onnx", compact_onnx="c.onnx"``: the weights of that compact ONNX file — e.g. one
    re-fitted by ``compact --reconstruct`` — carried back for fine-tuning.
    Other keyword options go to the framework adapter (Keras: ``custom_objects``).
    """
    if is_torch(model):
        if example_inputs is None:
            raise MBSError("a PyTorch model needs example_inputs — pass e.g. torch.rand(1, 3, 32, 32)")
        from onnxmbs.adapters.torch_adapter import apply_plan_torch

        return apply_plan_torch(model, plan, example_inputs, init=init, onnx_path=onnx_path, **options)
    if is_keras(model):
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
    if is_torch(model):
        from onnxmbs.adapters.torch_adapter import folded_params as impl

        return impl(model, example_inputs)
    from onnxmbs.adapters.keras_adapter import folded_params as impl_keras

    return impl_keras(model)


def example_input(framework: str, chw: tuple[int, int, int]) -> Any:
    """What ``apply_plan``/``folded_params`` need to trace a model (None for Keras)."""
    if framework != "torch":
        return None
    import torch

    return torch.zeros(1, *chw)


def adapt(model: Any, framework: str, plan: PlanDocument, chw: tuple[int, int, int], init: str) -> Any:
    """``apply_plan`` with the right example input for ``framework``."""
    return apply_plan(model, plan, example_input(framework, chw), init=init)


def count_params(model: Any, framework: str, chw: tuple[int, int, int]) -> int:
    """Parameters as the plan counts the ONNX export (BatchNorm folded)."""
    return folded_params(model, example_input(framework, chw))
