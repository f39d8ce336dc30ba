"""Direct scoring: the top-1 accuracy of the model with each candidate block removed.

Removing block *k* changes only what runs after its shortcut tensor. So per round the current
model runs **once** per batch with the inputs of every candidate's *suffix* as extra outputs
(the shared prefix, computed once), and each candidate then runs only its suffix: a sub-model
of the model-without-*k* whose inputs are the tensors the suffix reads from before it (for a
chain of blocks: just the block's input). Nodes that compute only from constants (exporters'
shape arithmetic, shared-weight ``Identity`` nodes) are copied into each suffix rather than
fetched. The data is batched once and held in memory.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxmbs.blocks.discover import Block, GraphIndex
from onnxmbs.blocks.remove import remove_blocks
from onnxmbs.progress import progress_bar
from onnxmbs.stats.counting import make_session
from onnxmbs.stats.labelled import LabelledData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suffix:
    """The part of the model-without-``block`` that runs after the block's shortcut."""

    block: Block
    model: onnx.ModelProto = field(repr=False)
    inputs: tuple[str, ...]  # tensors it reads from the shared prefix


def _static_nodes(g: GraphIndex, data_input: str) -> set[int]:
    """Nodes that do not depend on the data input (constants, shapes of weights, shared weights)."""
    dynamic: set[int] = set()
    live = {data_input}
    for i, node in enumerate(g.nodes):
        if any(t in live for t in node.input):
            dynamic.add(i)
            live.update(node.output)
    return set(range(len(g.nodes))) - dynamic


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types are a nicety; float is the usual answer
        inferred = model
    infos = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {vi.name: vi.type.tensor_type.elem_type for vi in infos if vi.type.tensor_type.elem_type}


def build_suffix(model: onnx.ModelProto, block: Block, data_input: str, types: Mapping[str, int]) -> Suffix:
    """The sub-model computing ``model``'s first output from the shortcut onwards, ``block`` removed."""
    removed = remove_blocks(model, [block], check=False)
    g = GraphIndex.of(removed.graph)
    static = _static_nodes(g, data_input)
    members, stack = set(), list(g.consumers.get(block.shortcut, ()))
    while stack:
        i = stack.pop()
        if i not in members:
            members.add(i)
            stack.extend(c for t in g.nodes[i].output for c in g.consumers.get(t, ()))
    stack = [g.producer[t] for i in members for t in g.nodes[i].input if g.producer.get(t) in static]
    while stack:  # constant-only producers feeding the suffix come along
        i = stack.pop()
        if i not in members:
            members.add(i)
            stack.extend(g.producer[t] for t in g.nodes[i].input if t in g.producer)
    order = sorted(members)
    produced = {t for i in order for t in g.nodes[i].output}
    stored = {init.name for init in removed.graph.initializer}
    inputs = tuple(dict.fromkeys(t for i in order for t in g.nodes[i].input
                                 if t and t not in produced and t not in stored))
    output = removed.graph.output[0]
    graph = helper.make_graph([g.nodes[i] for i in order], f"suffix_{block.id}",
                              [helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None)
                               for t in inputs],
                              [helper.make_tensor_value_info(output.name, output.type.tensor_type.elem_type, None)],
                              [init for init in removed.graph.initializer
                               if init.name in {t for i in order for t in g.nodes[i].input}])
    sub = helper.make_model(graph, opset_imports=removed.opset_import, ir_version=removed.ir_version)
    return Suffix(block, sub, inputs)


def with_outputs(model: onnx.ModelProto, names: Sequence[str], types: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (after its own outputs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None)
                            for n in names if n not in have)
    return out


def padded_batches(data: LabelledData, batch_size: int, fixed: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels): ``fixed``-size batches (the last padded with zeros, labels not) or free ones."""
    size = fixed or batch_size
    for x, y in data.batches(size):
        if fixed and len(x) < fixed:
            x = np.concatenate([x, np.zeros((fixed - len(x), *x.shape[1:]), x.dtype)])
        yield np.ascontiguousarray(x, dtype=np.float32), y


@dataclass(frozen=True)
class RoundScores:
    accuracy: float  # the current model's top-1
    scores: Mapping[str, float]  # block id -> top-1 with that block removed


def score_blocks(model: onnx.ModelProto, data_input: str, candidates: Sequence[Block], data: LabelledData, *,
                 batch_size: int = 64, fixed_batch: int | None = None, provider: str = "CPUExecutionProvider",
                 threads: int | None = None, progress: bool | None = None, desc: str = "scoring") -> RoundScores:
    """Top-1 accuracy of ``model`` and of ``model`` without each candidate, on ``data``."""
    types = _elem_types(model)
    suffixes = [build_suffix(model, b, data_input, types) for b in candidates]
    wanted = list(dict.fromkeys(t for s in suffixes for t in s.inputs))
    output = model.graph.output[0].name
    prefix = make_session(with_outputs(model, wanted, types), provider, threads=threads)
    sessions = [make_session(s.model, provider, threads=threads) for s in suffixes]
    correct, base = np.zeros(len(suffixes), np.int64), 0
    batches = -(-len(data) // (fixed_batch or batch_size))
    bar = progress_bar(progress, total=batches * len(suffixes), unit="pass", desc=desc)
    for x, y in padded_batches(data, batch_size, fixed_batch):
        values = dict(zip([output, *wanted], prefix.run([output, *wanted], {data_input: x})))
        base += _hits(values[output], y)
        for k, (suffix, session) in enumerate(zip(suffixes, sessions)):
            (scores,) = session.run(None, {t: values[t] for t in suffix.inputs})
            correct[k] += _hits(scores, y)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    n = len(data)
    return RoundScores(base / n, {s.block.id: float(c) / n for s, c in zip(suffixes, correct)})


def _hits(scores: np.ndarray, labels: np.ndarray) -> int:
    """Top-1 hits of the first ``len(labels)`` rows (the rest is padding)."""
    return int((scores[:len(labels)].reshape(len(labels), -1).argmax(axis=1) == labels).sum())

