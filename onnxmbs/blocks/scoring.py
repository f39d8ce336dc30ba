"""Direct scoring: the score (:mod:`onnxmbs.blocks.quality`: top-1, fidelity to the original, or the
user's metric) of the model with each candidate block removed.

Removing block *k* changes only what runs after its shortcut tensor. So per round the current
model runs **once** per batch with the inputs of every candidate's *suffix* as extra outputs
(the shared prefix, computed once), and each candidate then runs only its suffix: a sub-model
of the model-without-*k* whose inputs are the tensors the suffix reads from before it (for a
chain of blocks: just the block's input), cut out with :func:`onnxmbs.graph.edit.extract`.
Nodes that compute only from constants (exporters' shape arithmetic, shared-weight
``Identity`` nodes) come along into each suffix rather than being fetched. The data is
batched once and held in memory.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxmbs.blocks.discover import Block, GraphIndex
from onnxmbs.blocks.quality import Quality, top1
from onnxmbs.blocks.remove import remove_blocks
from onnxmbs.graph.edit import expose, extract
from onnxmbs.progress import progress_bar
from onnxmbs.runtime.session import make_session
from onnxmbs.data.labelled import LabelledData

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


def build_suffix(model: onnx.ModelProto, block: Block, data_input: str) -> Suffix:
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
    inputs = tuple(dict.fromkeys(t for i in sorted(members) for t in g.nodes[i].input
                                 if t and (t == data_input or (t in g.producer and g.producer[t] not in members
                                                               and g.producer[t] not in static))))
    return Suffix(block, extract(removed, inputs, [removed.graph.output[0].name]), inputs)


def padded_batches(data: LabelledData, batch_size: int,
                   fixed: int | None) -> Iterator[tuple[np.ndarray, np.ndarray | None, int]]:
    """(images, labels or None, real rows): ``fixed``-size batches (the last padded with zeros) or free ones."""
    size = fixed or batch_size
    for x, y in data.batches(size):
        n = len(x)
        if fixed and n < fixed:
            x = np.concatenate([x, np.zeros((fixed - n, *x.shape[1:]), x.dtype)])
        yield np.ascontiguousarray(x, dtype=np.float32), y, n


@dataclass(frozen=True)
class RoundScores:
    accuracy: float  # the current model's score
    scores: Mapping[str, float]  # block id -> score with that block removed


def score_blocks(model: onnx.ModelProto, data_input: str, candidates: Sequence[Block], data: LabelledData, *,
                 quality: Quality | None = None, batch_size: int = 64, fixed_batch: int | None = None,
                 provider: str = "CPUExecutionProvider", threads: int | None = None, progress: bool | None = None,
                 desc: str = "scoring") -> RoundScores:
    """The score (``quality``; default top-1) of ``model`` and of ``model`` without each candidate, on ``data``."""
    quality = quality or top1()
    suffixes = [build_suffix(model, b, data_input) for b in candidates]
    wanted = list(dict.fromkeys(t for s in suffixes for t in s.inputs))
    output = model.graph.output[0].name
    prefix = make_session(expose(model, wanted), provider, threads=threads)
    sessions = [make_session(s.model, provider, threads=threads) for s in suffixes]
    refs = _reference_outputs(quality, data, batch_size, fixed_batch, provider, threads)
    base, tallies = quality.tally(), [quality.tally() for _ in suffixes]
    batches = -(-len(data) // (fixed_batch or batch_size))
    bar = progress_bar(progress, total=batches * len(suffixes), unit="pass", desc=desc)
    for b, (x, y, n) in enumerate(padded_batches(data, batch_size, fixed_batch)):
        values = dict(zip([output, *wanted], prefix.run([output, *wanted], {data_input: x})))
        ref = refs[b] if refs is not None else None
        base.add(values[output], y, ref, n)
        for tally, suffix, session in zip(tallies, suffixes, sessions):
            (out,) = session.run(None, {t: values[t] for t in suffix.inputs})
            tally.add(out, y, ref, n)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return RoundScores(base.value(), {s.block.id: t.value() for s, t in zip(suffixes, tallies)})


def _reference_outputs(quality: Quality, data: LabelledData, batch_size: int, fixed: int | None, provider: str,
                       threads: int | None) -> list[np.ndarray] | None:
    """The reference model's first output per batch (fidelity), run once per data and batching and kept on
    ``quality``: every round compares with the same original."""
    if not quality.needs_reference:
        return None
    key = (id(data), batch_size, fixed)
    if key not in quality.cache:
        session = make_session(quality.reference, provider, threads=threads)
        name = session.get_inputs()[0].name
        quality.cache[key] = [session.run(None, {name: x})[0] for x, _, _ in padded_batches(data, batch_size, fixed)]
    return quality.cache[key]
