"""Compact surgery, part 4 — write the edits into a new ModelProto (the input is never touched).

* ``Identity`` nodes that only forward a constant (the TorchScript exporter shares equal
  biases this way) are replaced by an initializer of their output's name, so every weight a
  node reads is a plain initializer that can be cut.
* Each constant gets one initializer per distinct value its uses need; the value the
  untouched uses read keeps the name, others get ``<name>__c<k>``. Copies of a parameter
  tensor are reported (they make the file larger than the plan's count, which counts a
  shared tensor once).
* Stale ``value_info`` is dropped; node ``group`` attributes are updated; initializers and
  ``Constant`` nodes left without readers are removed.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxmbs.compact.surgery import Edits, Use

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rebuilt:
    model: onnx.ModelProto
    copies: tuple[str, ...]  # parameter tensors written more than once (uses needed different cuts)
    extra_params: int  # elements in those extra copies, beyond what the plan counted


def forwarded_constants(graph: onnx.GraphProto, consts: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Identity output -> constant it forwards (not graph outputs)."""
    outputs = {o.name for o in graph.output}
    known = set(consts)
    fwd: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in known and node.output[0] not in outputs:
            fwd[node.output[0]] = node.input[0]
            known.add(node.output[0])
    return fwd


def _variants(name: str, uses: list[Use], edits: Edits, original: np.ndarray) -> list[tuple[np.ndarray | None, list[Use]]]:
    """Distinct values the uses of one constant need; ``None`` stands for the unchanged original."""
    out: list[tuple[np.ndarray | None, list[Use]]] = []
    for use in uses:
        value = edits.values.get(use)
        for known, members in out:
            same = value is None and known is None or (value is not None and known is not None and value.dtype == known.dtype
                                                       and value.shape == known.shape and np.array_equal(value, known))
            if same:
                members.append(use)
                break
        else:
            out.append((value, [use]))
    out.sort(key=lambda v: v[0] is not None)  # the unchanged value first: it keeps the name
    return out


def _fresh_name(base: str, taken: set[str]) -> str:
    k = 1
    while f"{base}__c{k}" in taken:
        k += 1
    taken.add(f"{base}__c{k}")
    return f"{base}__c{k}"


class _Writer:
    def __init__(self, original: onnx.ModelProto, consts: Mapping[str, np.ndarray], fwd: Mapping[str, str]):
        self.model = copy.deepcopy(original)
        self.graph = self.model.graph
        self.consts, self.fwd = consts, fwd
        self.inits = {i.name: i for i in self.graph.initializer}
        self.taken = {t for n in self.graph.node for t in [*n.input, *n.output]} | set(self.inits)
        self.touched: set[str] = set()
        self.copies: list[str] = []
        self.extra = 0

    def put(self, name: str, value: np.ndarray) -> None:
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        if name in self.inits:
            self.inits[name].CopyFrom(tensor)
        else:
            self.graph.initializer.append(tensor)
            self.inits[name] = self.graph.initializer[-1]
        self.touched.add(name)

    def constant(self, name: str, uses: list[Use], edits: Edits, params: set[str]) -> None:
        original = self.consts[name]
        variants = _variants(name, uses, edits, original)
        if name in self.fwd:
            self.put(name, original if variants[0][0] is None else variants[0][0])
        elif len(variants) == 1 and variants[0][0] is None:
            return
        self.touched.add(name)
        for k, (value, members) in enumerate(variants):
            if value is None:
                continue
            target = name if k == 0 and name in self.inits else _fresh_name(name, self.taken)
            self.put(target, value)
            for i, j in members:
                self.graph.node[i].input[j] = target
        if name in params and len(variants) > 1:
            first = variants[[k for k, (_, m) in enumerate(variants) if uses[0] in m][0]][0]
            sizes = [(original if v is None else v).size for v, _ in variants]
            self.extra += sum(sizes) - (original if first is None else first).size
            self.copies.append(name)

    def attrs(self, edits: Edits) -> None:
        for i, values in edits.attrs.items():
            node = self.graph.node[i]
            for key, value in values.items():
                kept = [a for a in node.attribute if a.name != key]
                del node.attribute[:]
                node.attribute.extend([*kept, helper.make_attribute(key, value)])
        for i, names in edits.dropped.items():
            node = self.graph.node[i]
            kept = [a for a in node.attribute if a.name not in names]
            del node.attribute[:]
            node.attribute.extend(kept)

    def added(self, edits: Edits) -> None:
        """New constant inputs: a Split's compact sizes where the original split into equal parts, a Slice's
        compact bounds where the original computed them from the shape."""
        for (i, j), value in edits.added.items():
            node = self.graph.node[i]
            name = _fresh_name(f"{node.name or node.op_type}_compact", self.taken)
            self.put(name, value)
            while len(node.input) <= j:
                node.input.append("")
            node.input[j] = name

    def tidy(self) -> None:
        """Drop forwarded Identity nodes, and constants / Constant nodes this surgery left unread."""
        nodes = [n for n in self.graph.node if not (n.op_type == "Identity" and n.output[0] in self.fwd)]
        read = {t for n in nodes for t in n.input} | {o.name for o in self.graph.output}
        dead = {n.input[0] for n in self.graph.node if n.output and n.output[0] in self.fwd} | self.touched
        nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] in dead and n.output[0] not in read)]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        keep = [t for t in self.graph.initializer if t.name in read or t.name not in dead]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        kept = {t.name: t for t in keep}
        inputs = [i for i in self.graph.input if i.name in kept or i.name not in dead]
        for gin in inputs:
            if gin.name in kept:
                gin.type.tensor_type.shape.Clear()
                for d in kept[gin.name].dims:
                    gin.type.tensor_type.shape.dim.add().dim_value = d
        del self.graph.input[:]
        self.graph.input.extend(inputs)
        del self.graph.value_info[:]


def rebuild(original: onnx.ModelProto, edits: Edits, consts: Mapping[str, np.ndarray], fwd: Mapping[str, str],
            params: set[str]) -> Rebuilt:
    """The compact ModelProto: ``original`` with every edit applied."""
    writer = _Writer(original, consts, fwd)
    uses: dict[str, list[Use]] = {}
    for i, node in enumerate(writer.graph.node):
        if node.op_type == "Identity" and node.output[0] in fwd:
            continue  # removed: its output becomes an initializer
        for j, tensor in enumerate(node.input):
            if tensor in consts:
                uses.setdefault(tensor, []).append((i, j))
    for name, members in uses.items():
        writer.constant(name, members, edits, params)
    writer.attrs(edits)
    writer.added(edits)
    writer.tidy()
    if writer.copies:
        logger.warning("%d shared parameter tensor(s) needed different cuts and were copied (+%d parameters): %s",
                       len(writer.copies), writer.extra, ", ".join(writer.copies[:5]))
    return Rebuilt(model=writer.model, copies=tuple(writer.copies), extra_params=writer.extra)
