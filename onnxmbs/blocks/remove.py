"""Remove residual blocks from an ONNX model: the join's readers read the shortcut instead.

The branch nodes and the join go; whatever followed the join (its activation, the next
block) now reads the shortcut tensor, so a ``Relu(Add(branch, x))`` becomes ``Relu(x)``.
Initializers and ``value_info`` only the removed nodes used go too. The result is a new
model that passes ``onnx.checker.check_model(full_check=True)``; the model passed in, its
input and outputs are untouched.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import onnx
from onnx import helper

from onnxmbs.blocks.discover import Block
from onnxmbs.errors import MBSError
from onnxmbs.graph.shapes import node_names

logger = logging.getLogger(__name__)


def remove_blocks(model: onnx.ModelProto, blocks: Iterable[Block], *, check: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` without ``blocks`` (each removable, found on this very model)."""
    blocks = list(blocks)
    for block in blocks:
        if not block.removable:
            raise MBSError(f"block {block.id} (join {block.join}) is not removable: {block.reason} — "
                           "remove only blocks with an identity shortcut")
    out = copy.deepcopy(model)
    graph = out.graph
    names = node_names(graph)
    drop = {n for b in blocks for n in (*b.nodes, b.join)}
    missing = drop - set(names)
    if missing:
        raise MBSError(f"node(s) {', '.join(sorted(missing)[:3])} of the blocks are not in the model — find the "
                       "blocks on the model they are removed from")
    rename = _rewiring(blocks)
    kept = [node for node, name in zip(graph.node, names) if name not in drop]
    for node in kept:
        for k, name in enumerate(node.input):
            node.input[k] = rename.get(name, name)
    kept += _output_bridges(graph, rename)
    del graph.node[:]
    graph.node.extend(kept)
    _prune(graph)
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


def _output_bridges(graph: onnx.GraphProto, rename: dict[str, str]) -> list[onnx.NodeProto]:
    """A join output that is a graph output keeps its name through an Identity of the shortcut."""
    return [helper.make_node("Identity", [rename[o.name]], [o.name], name=f"{o.name}_bypass")
            for o in graph.output if o.name in rename]


def _prune(graph: onnx.GraphProto) -> None:
    """Drop initializers and value_info that no remaining node uses or produces."""
    used = {t for node in graph.node for t in node.input} | {o.name for o in graph.output}
    produced = {t for node in graph.node for t in node.output} | {i.name for i in graph.input}
    stored = {init.name for init in graph.initializer}
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    inputs = [i for i in graph.input if i.name not in stored or i.name in used]
    if len(inputs) != len(graph.input):  # initializers listed as graph inputs (old exporters)
        del graph.input[:]
        graph.input.extend(inputs)
