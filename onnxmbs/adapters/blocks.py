"""Remove a blocks plan's blocks from your own model: PyTorch ``nn.Module`` or Keras model in, new model out.

    from onnxmbs.adapters.blocks import remove_blocks_from
    shallow = remove_blocks_from(my_model, "blocks.json", torch.rand(1, 3, 32, 32))   # PyTorch
    shallow = remove_blocks_from(my_keras_model, "blocks.json")                      # Keras

The user's model is never modified; the returned one is checked with a forward pass and,
when the planned ONNX file is at hand and computes what the model computes, against the
shallow ONNX model on the same input. Framework-free helpers live in
:mod:`shallow`; the framework parts in :mod:`torch_blocks` and :mod:`keras_blocks`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxmbs.adapters.shallow import load_blocks_plan
from onnxmbs.blocks.document import BlocksPlan
from onnxmbs.errors import MBSError
from onnxmbs.runtime.frameworks import is_keras, is_torch


def remove_blocks_from(model: Any, plan: BlocksPlan | str | Path, example_inputs: Any = None, *,
                       onnx_path: str | Path | None = None) -> Any:
    """A new model without the plan's removed blocks (PyTorch needs ``example_inputs``)."""
    plan = load_blocks_plan(plan)
    if is_torch(model):
        if example_inputs is None:
            raise MBSError("a PyTorch model needs example_inputs — pass e.g. torch.rand(1, 3, 32, 32)")
        from onnxmbs.adapters.torch_blocks import remove_blocks_torch

        return remove_blocks_torch(model, plan, example_inputs, onnx_path=onnx_path)
    if is_keras(model):
        from onnxmbs.adapters.keras_blocks import remove_blocks_keras

        return remove_blocks_keras(model, plan, onnx_path=onnx_path)
    raise MBSError(f"cannot remove blocks from a {type(model).__name__} — pass a torch.nn.Module or a Keras model")
