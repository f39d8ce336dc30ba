"""What removing blocks from a PyTorch or Keras model needs that is framework-free: the blocks plan, the
planned ONNX model's weight names (to match layers by weight), and the check of the shallow model against
the shallow ONNX model. :mod:`.torch_blocks` and :mod:`.keras_blocks` use it; :mod:`.blocks` dispatches.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onnxmbs.blocks.document import BlocksPlan, read_blocks_plan
from onnxmbs.errors import MBSError
from onnxmbs.runtime.session import open_session, outputs_close

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
    from onnxmbs.blocks.apply import shallow_model

    full = open_session(path)
    name = full.get_inputs()[0].name
    if not outputs_close(full.run(None, {name: example})[0], original(example)):
        logger.info("%s does not compute what the model does (other weights?): checked by output shape only", path)
        return
    cut = open_session(shallow_model(path, plan))
    want, got = cut.run(None, {name: example})[0], shallow(example)
    if not outputs_close(got, want):
        raise MBSError(f"the model without the blocks differs from the shallow ONNX model (max |diff| "
                       f"{float(np.abs(got - want).max()):.3g}) — the blocks were not matched safely; please report it")
