"""Replay a blocks plan on the ONNX model it was made from: the shallow model, again."""
from __future__ import annotations

from pathlib import Path

import onnx

from onnxmbs.blocks.discover import find_blocks
from onnxmbs.blocks.document import BlocksPlan
from onnxmbs.blocks.remove import remove_blocks
from onnxmbs.errors import MBSError
from onnxmbs.graph.load import load_model


def shallow_model(source: str | Path | onnx.ModelProto, plan: BlocksPlan) -> onnx.ModelProto:
    """``source`` without the plan's removed blocks, removed one by one in the plan's order."""
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    shape = tuple(plan.model.shape)
    ids = {b.join: b.id for b in plan.blocks}
    for block_id in plan.removed:
        found = {b.id: b for b in find_blocks(load_model(model, input_shape=shape), ids=ids)}
        block = found.get(block_id)
        if block is None or not block.removable:
            raise MBSError(f"block {block_id} of the blocks plan is not a removable block of this model — "
                           "replay the plan on the model it was made from")
        model = remove_blocks(model, [block], check=False)
    return remove_blocks(model, [], check=True)
