"""Reconstruction, part 1 — intermediate tensors of a model, batch by batch, from onnxruntime.

:func:`probe` returns a copy of a model cut down to the nodes that the requested tensors
need, with those tensors as its outputs (the graph's own outputs are dropped unless
requested). :class:`Probe` runs it on one batch at a time and returns the tensors by name,
so only one batch's activations of the requested tensors are ever held.

:func:`open_batches` opens the reconstruction data for a model input: a function that
starts a fresh pass over the data each time it is called (the reconstruction makes one
pass per stage of layers), as float32 batches in the model's layout.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxmbs.errors import MBSError
from onnxmbs.graph.load import ModelInput
from onnxmbs.stats.calibration import make_preprocess, open_calibration
from onnxmbs.stats.counting import make_session

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataOptions:
    """Where the reconstruction's calibration images come from and how they are read."""
    data: Any = field(repr=False)  # image folder / .npy / .npz path, numpy array, or a re-iterable of arrays
    preprocess: str | None = "imagenet"
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    max_images: int | None = None
    batch_size: int = 16


def open_batches(model_input: ModelInput, options: DataOptions, *, dynamic: bool) -> Callable[[], Iterator[np.ndarray]]:
    """A function that starts a new pass over the data: float32 batches in the model's layout.

    A model with a fixed batch size gets batches of exactly that size (a short last batch
    is dropped with a warning).
    """
    if options.data is None:
        raise MBSError("reconstruction needs calibration images — pass --data PATH (image folder, .npy/.npz)")
    if isinstance(options.data, Iterator):
        raise MBSError("reconstruction reads its data several times; pass a path, an array or a list, "
                       "not a generator")
    fixed = None if dynamic else model_input.shape[0]
    calib = open_calibration(options.data, shape=model_input.shape, layout=model_input.layout,
                             preprocess=make_preprocess(options.preprocess, mean=options.mean, std=options.std),
                             max_images=options.max_images, batch_size=fixed or options.batch_size)

    def batches() -> Iterator[np.ndarray]:
        for batch in calib.batches():
            if fixed is not None and batch.shape[0] != fixed:
                logger.warning("model has a fixed batch size of %d: the last %d image(s) were not used",
                               fixed, batch.shape[0])
                continue
            yield np.ascontiguousarray(batch, dtype=np.float32)

    return batches


def _needed(graph: onnx.GraphProto, outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes (in graph order) that the tensors ``outputs`` depend on."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    want, seen, stack = set(), set(), [t for t in outputs]
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        i = producer.get(tensor)
        if i is not None and i not in want:
            want.add(i)
            stack.extend(t for t in graph.node[i].input if t)
            for sub in _subgraph_inputs(graph.node[i]):
                stack.append(sub)
    return [graph.node[i] for i in sorted(want)]


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer tensors read inside If/Loop/Scan bodies (rare in CNNs; followed to be safe)."""
    names = []
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            names += [t for n in g.node for t in n.input if t]
    return names


def probe(model: onnx.ModelProto, outputs: Sequence[str], *, input_name: str, dynamic: bool) -> onnx.ModelProto:
    """``model`` reduced to what ``outputs`` need, with exactly those tensors as its outputs."""
    graph = model.graph
    nodes = _needed(graph, outputs)
    read = {t for n in nodes for t in [*n.input, *_subgraph_inputs(n)]}
    inits = [t for t in graph.initializer if t.name in read]
    inputs = [i for i in graph.input if i.name == input_name]
    new_input = onnx.ValueInfoProto()
    new_input.CopyFrom(inputs[0])
    if dynamic:
        new_input.type.tensor_type.shape.dim[0].dim_param = "N"
    outs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs]
    new = helper.make_graph(nodes, graph.name or "probe", [new_input], outs, inits)
    result = helper.make_model(new, opset_imports=list(model.opset_import))
    result.ir_version = model.ir_version
    return result


class Probe:
    """A session computing some intermediate tensors of a model; ``run(batch)`` -> {name: array}."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], *, input_name: str, dynamic: bool,
                 provider: str = "CPUExecutionProvider") -> None:
        self.input_name = input_name
        self.tensors = list(dict.fromkeys(tensors))
        inner = [t for t in self.tensors if t != input_name]
        self.session = None
        if inner:
            proto = probe(model, inner, input_name=input_name, dynamic=dynamic)
            self.session = make_session(proto, provider)
        self.inner = inner

    def run(self, batch: np.ndarray) -> Mapping[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.session is not None:
            values = self.session.run(self.inner, {self.input_name: batch})
            out.update(zip(self.inner, values))
        if self.input_name in self.tensors:
            out[self.input_name] = batch
        return out
