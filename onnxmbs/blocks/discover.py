"""Residual blocks found in the ONNX graph: every ``Add``/``Sum`` joining two computed tensors.

A join ``Add(a, b)`` is an **identity** residual when one input, the *shortcut* ``s``, is an
ancestor of the other, the *branch output*: the block's nodes are then the branch's, the nodes
the branch output depends on that ``s`` does not. Otherwise both inputs fork from a common
tensor through nodes of their own (a projection / downsampling shortcut, or an
Inception-style join); that block is reported with the nodes of both paths and is not removable.

A block is **removable** when its removal leaves a consistent graph with the same shapes:
an identity shortcut, the join's output shaped like the shortcut (no broadcasting), and
branch nodes whose outputs are read only inside the branch (never by a node outside it,
never a graph output), reading nothing from outside the block but the shortcut.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxmbs.graph.costs import node_macs, param_tensors
from onnxmbs.graph.load import LoadedModel
from onnxmbs.graph.proto import node_names

logger = logging.getLogger(__name__)

JOINS = ("Add", "Sum")


@dataclass(frozen=True)
class Block:
    """One residual join and the branch it closes."""

    id: str
    join: str  # the Add/Sum node's name
    nodes: tuple[str, ...]  # branch node names, topological order (identity) / both paths (projection)
    shortcut: str  # the tensor the join forwards unchanged ("" for a projection)
    branch: str  # the branch output read by the join ("" for a projection)
    output: str  # the join's output tensor
    params: int
    macs: int  # per image
    removable: bool
    reason: str  # why not removable ("" when removable)


@dataclass(frozen=True)
class GraphIndex:
    """Node lookup tables of one graph."""

    nodes: tuple[onnx.NodeProto, ...]
    names: tuple[str, ...]
    producer: Mapping[str, int]  # tensor -> index of the node producing it
    consumers: Mapping[str, tuple[int, ...]]  # tensor -> indices of the nodes reading it
    outputs: frozenset[str]  # graph outputs

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> GraphIndex:
        producer, consumers = {}, {}
        for i, node in enumerate(graph.node):
            for out in node.output:
                producer[out] = i
            for name in node.input:
                if name:
                    consumers.setdefault(name, []).append(i)
        return cls(tuple(graph.node), tuple(node_names(graph)), producer,
                   {k: tuple(v) for k, v in consumers.items()}, frozenset(o.name for o in graph.output))

    def ancestors(self, tensor: str) -> set[int]:
        """Indices of the nodes ``tensor`` depends on (its producer included)."""
        seen: set[int] = set()
        stack = [self.producer[tensor]] if tensor in self.producer else []
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(self.producer[t] for t in self.nodes[i].input if t in self.producer)
        return seen


def _dynamic_inputs(node: onnx.NodeProto, constants: Mapping[str, object], shapes: Mapping) -> list[str]:
    return [t for t in node.input if t and t not in constants and len(shapes.get(t, ())) >= 3]


def find_blocks(loaded: LoadedModel, *, ids: Mapping[str, str] | None = None) -> list[Block]:
    """Every residual join of ``loaded`` as a :class:`Block`, in graph order.

    ``ids``: join name -> block id to keep (blocks of a model that already lost some); new
    joins get ``b<n>`` in order.
    """
    g = GraphIndex.of(loaded.graph)
    blocks = []
    for i, node in enumerate(g.nodes):
        if node.op_type not in JOINS:
            continue
        inputs = _dynamic_inputs(node, loaded.constants, loaded.shapes)
        if len(inputs) < 2:
            continue  # a bias or scale added to one tensor, not a join
        block_id = (ids or {}).get(g.names[i], f"b{len(blocks)}")
        blocks.append(_block(loaded, g, i, inputs, block_id))
    return blocks


def _block(loaded: LoadedModel, g: GraphIndex, join: int, inputs: list[str], block_id: str) -> Block:
    node = g.nodes[join]
    if len(inputs) > 2 or len(node.input) > 2:
        return _non_removable(loaded, g, join, inputs, block_id, f"{node.op_type} of {len(node.input)} inputs")
    a, b = inputs
    anc_a, anc_b = g.ancestors(a), g.ancestors(b)
    if a in g.producer and g.producer[a] in anc_b or (a not in g.producer and not anc_b.isdisjoint(g.consumers[a])):
        shortcut, branch, anc_s, anc_branch = a, b, anc_a, anc_b
    elif b in g.producer and g.producer[b] in anc_a or (b not in g.producer and not anc_a.isdisjoint(g.consumers[b])):
        shortcut, branch, anc_s, anc_branch = b, a, anc_b, anc_a
    else:
        return _non_removable(loaded, g, join, inputs, block_id, "projection shortcut: both inputs are computed")
    members = sorted(anc_branch - anc_s)
    reason = _why_not(loaded, g, join, shortcut, set(members))
    return Block(block_id, g.names[join], tuple(g.names[i] for i in members), shortcut, branch,
                 node.output[0], *_costs(loaded, g, members), not reason, reason)


def _why_not(loaded: LoadedModel, g: GraphIndex, join: int, shortcut: str, members: set[int]) -> str:
    out = g.nodes[join].output[0]
    if loaded.shapes.get(out) != loaded.shapes.get(shortcut):
        return (f"shape change: the join outputs {loaded.shapes.get(out)}, the shortcut is "
                f"{loaded.shapes.get(shortcut)}")
    if not members:
        return "empty branch: the join adds the shortcut to itself"
    for i in sorted(members):
        for t in g.nodes[i].output:
            outside = [g.names[c] for c in g.consumers.get(t, ()) if c not in members and c != join]
            if outside or t in g.outputs:
                return f"branch shared elsewhere: {t} is also read by {outside[0] if outside else 'the graph output'}"
        for t in g.nodes[i].input:
            if t and t != shortcut and t not in loaded.constants and g.producer.get(t, -1) not in members:
                return f"branch reads {t} from outside the block"
    return ""


def _non_removable(loaded: LoadedModel, g: GraphIndex, join: int, inputs: Sequence[str], block_id: str,
                   reason: str) -> Block:
    """A join that is not an identity residual: its nodes are both paths down to their common fork."""
    ancestry = [g.ancestors(t) for t in inputs]
    common = set.intersection(*ancestry)
    members = sorted(set.union(*ancestry) - common)
    return Block(block_id, g.names[join], tuple(g.names[i] for i in members), "", "", g.nodes[join].output[0],
                 *_costs(loaded, g, members), False, reason)


def _costs(loaded: LoadedModel, g: GraphIndex, members: Sequence[int]) -> tuple[int, int]:
    """Parameters only the block's nodes use, and the block's MACs per image."""
    inside = set(members)
    sub = onnx.GraphProto(node=[g.nodes[i] for i in members])
    batch = max(loaded.input.shape[0], 1)
    params = 0
    for name in param_tensors(sub, loaded.constants, model_graph=loaded.graph):
        if all(c in inside for c in g.consumers.get(name, ())):
            params += int(getattr(loaded.constants[name], "size", 0))
    macs = sum(node_macs(g.nodes[i], loaded.shapes, batch) for i in members)
    return params, macs
