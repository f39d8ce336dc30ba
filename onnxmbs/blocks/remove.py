"""Remove residual blocks from an ONNX model: the join's readers read the shortcut instead.

The branch nodes and the join go; whatever followed the join (its activation, the next
block) now reads the shortcut tensor, so a ``Relu(Add(branch, x))`` becomes ``Relu(x)``
(:func:`onnxmbs.graph.edit.rewire`, which also drops the constants only the removed nodes
used). The result is a new model that passes ``onnx.checker.check_model(full_check=True)``;
the model passed in, its input and outputs are untouched.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import onnx

from onnxmbs.blocks.discover import Block
from onnxmbs.errors import MBSError
from onnxmbs.graph.edit import rewire
from onnxmbs.graph.proto import node_names

logger = logging.getLogger(__name__)


def remove_blocks(model: onnx.ModelProto, blocks: Iterable[Block], *, check: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` without ``blocks`` (each removable, found on this very model)."""
    blocks = list(blocks)
    for block in blocks:
        if not block.removable:
            raise MBSError(f"block {block.id} (join {block.join}) is not removable: {block.reason} — "
                           "remove only blocks with an identity shortcut")
    names = set(node_names(model.graph))
    drop = {n for b in blocks for n in (*b.nodes, b.join)}
    missing = drop - names
    if missing:
        raise MBSError(f"node(s) {', '.join(sorted(missing)[:3])} of the blocks are not in the model — find the "
                       "blocks on the model they are removed from")
    if blocks:
        out = rewire(model, _rewiring(blocks), drop=drop)
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    if check:
        try:
            onnx.checker.check_model(out, full_check=True)
        except Exception as exc:  # checker and shape-inference errors
            raise MBSError(f"removing blocks {', '.join(b.id for b in blocks)} left an invalid model "
                           f"({str(exc).splitlines()[0][:200]}) — please report it with the model") from None
    return out


def _rewiring(blocks: list[Block]) -> dict[str, str]:
    """Join output -> the tensor its readers read now (chains of removed blocks followed to the end)."""
    rename = {b.output: b.shortcut for b in blocks}
    for key in list(rename):
        seen = {key}
        while rename[key] in rename and rename[key] not in seen:
            seen.add(rename[key])
            rename[key] = rename[rename[key]]
    return rename
