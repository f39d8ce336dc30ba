"""Remove a blocks plan's blocks from your own model: PyTorch ``nn.Module`` or Keras model in, new model out.

    from onnxmbs.adapters.blocks import remove_blocks_from
    shallow = remove_blocks_from(my_model, "blocks.json", torch.rand(1, 3, 32, 32))   # PyTorch
    shallow = remove_blocks_from(my_keras_model, "blocks.json")                      # Keras

The user's model is never modified; the returned one is checked with a forward pass and,
when the planned ONNX file is at hand and computes what the model computes, against the
shallow ONNX model on the same input. Framework-free helpers live here; the framework
parts in :mod:`torch_blocks` and :mod:`keras_blocks`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.blocks.document import BlocksPlan, read_blocks_plan
from onnxmbs.errors import MBSError
from onnxmbs.runtime import outputs_close

logger = logging.getLogger(__name__)


def load_blocks_plan(plan: BlocksPlan | str | Path) -> BlocksPlan:
    return plan if isinstance(plan, BlocksPlan) else read_blocks_plan(plan)


def _onnx_file(plan: BlocksPlan, onnx_path: str | Path | None) -> Path | None:
    path = Path(onnx_path or plan.model.path or "")
    return path if path.is_file() else None


def onnx_weights(plan: BlocksPlan, onnx_path: str | Path | None) -> dict[str, str]:
    """Node name -> weight input name of the planned ONNX model's Conv/Gemm nodes (empty without the file)."""
    path = _onnx_file(plan, onnx_path)
    if path is None:
        return {}
    import onnx

    from onnxmbs.graph.proto import node_names

    graph = onnx.load(str(path), load_external_data=False).graph
    return {name: node.input[1] for node, name in zip(graph.node, node_names(graph))
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 1}


def verify_shallow(plan: BlocksPlan, onnx_path: str | Path | None, original: Callable[..., np.ndarray],
                   shallow: Callable[..., np.ndarray], example: np.ndarray) -> None:
    """The shallow model runs and keeps the output shape; it computes what the shallow ONNX does."""
    before, after = original(), shallow()
    if before.shape != after.shape:
        raise MBSError(f"the model without the blocks outputs {after.shape}, not {before.shape} — cannot remove "
                       "these blocks safely; please report it")
    path = _onnx_file(plan, onnx_path)
    if path is None:
        logger.info("planned ONNX file not found: the shallow model is checked by its output shape only")
        return
    import onnxruntime as ort

    from onnxmbs.blocks.apply import shallow_model

    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = full.get_inputs()[0].name
    if not outputs_close(full.run(None, {name: example})[0], original(example)):
        logger.info("%s does not compute what the model does (other weights?): checked by output shape only", path)
        return
    cut = ort.InferenceSession(shallow_model(path, plan).SerializeToString(), providers=["CPUExecutionProvider"])
    want, got = cut.run(None, {name: example})[0], shallow(example)
    if not outputs_close(got, want):
        raise MBSError(f"the model without the blocks differs from the shallow ONNX model (max |diff| "
                       f"{float(np.abs(got - want).max()):.3g}) — the blocks were not matched safely; please report it")


def remove_blocks_from(model: Any, plan: BlocksPlan | str | Path, example_inputs: Any = None, *,
                       onnx_path: str | Path | None = None) -> Any:
    """A new model without the plan's removed blocks (PyTorch needs ``example_inputs``)."""
    from onnxmbs.adapters import _is_keras, _is_torch

    plan = load_blocks_plan(plan)
    if _is_torch(model):
        if example_inputs is None:
            raise MBSError("a PyTorch model needs example_inputs — pass e.g. torch.rand(1, 3, 32, 32)")
        from onnxmbs.adapters.torch_blocks import remove_blocks_torch

        return remove_blocks_torch(model, plan, example_inputs, onnx_path=onnx_path)
    if _is_keras(model):
        from onnxmbs.adapters.keras_blocks import remove_blocks_keras

        return remove_blocks_keras(model, plan, onnx_path=onnx_path)
    raise MBSError(f"cannot remove blocks from a {type(model).__name__} — pass a torch.nn.Module or a Keras model")
