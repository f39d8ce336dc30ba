"""Tiny helpers that read ONNX protos: attributes, node names, external-data files.

Every stage reads nodes through these, so an exporter quirk (unnamed nodes, a missing
attribute) is handled once.
"""
from __future__ import annotations

from collections import Counter

import onnx
from onnx import helper


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute ``name`` of ``node``, or ``default`` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_names(graph: onnx.GraphProto) -> list[str]:
    """Node names, with unique stand-ins for nodes the exporter left unnamed."""
    seen: Counter[str] = Counter()
    names = []
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}__{seen[name] - 1}")
    return names


def external_locations(graph: onnx.GraphProto) -> list[str]:
    """The external-data file names the graph's tensors (initializers, constants, subgraphs) refer to."""
    tensors, found = list(graph.initializer), set()
    for node in graph.node:
        for a in node.attribute:
            tensors += ([a.t] if a.HasField("t") else []) + list(a.tensors)
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                found.update(external_locations(sub))
    found.update(e.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location")
    return sorted(found)
