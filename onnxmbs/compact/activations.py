"""Reconstruction, part 1 — intermediate tensors of a model, batch by batch, from onnxruntime.

:class:`Probe` exposes the requested tensors as the outputs of a copy of the model cut down to
the nodes they need (:func:`onnxmbs.graph.edit.expose`), runs it on one batch at a time and
returns the tensors by name, so only one batch's activations of the requested tensors are ever
held. :class:`SampledProbe` gathers tensors at positions fed with each batch inside the session,
so only the sampled rows come back.

:func:`open_batches` opens the reconstruction data for a model input: a function that
starts a fresh pass over the data each time it is called (the reconstruction makes one
pass per stage of layers), as float32 batches in the model's layout.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnxmbs.errors import MBSError
from onnxmbs.graph.edit import expose, gather_at
from onnxmbs.graph.load import LoadedModel
from onnxmbs.data.calibration import open_calibration
from onnxmbs.data.sources import Order
from onnxmbs.runtime.session import choose_provider, make_session
from onnxmbs.stats.measure import CalibrationOptions

logger = logging.getLogger(__name__)


def open_batches(loaded: LoadedModel, options: CalibrationOptions, *,
                 rows: tuple[int, int] | None = None) -> Callable[[], Iterator[np.ndarray]]:
    """A function that starts a new pass over the data: float32 batches in ``loaded``'s layout, normalised
    by the one rule (``options``' flags, else the model's metadata, else imagenet); ``rows``: only
    rows [start, stop) of the data (a shard, cut between whole batches by the caller).

    A model with a fixed batch size gets batches of exactly that size (a short last batch
    is dropped with a warning).
    """
    calib, fixed = _calibration(loaded, options, rows)

    def batches() -> Iterator[np.ndarray]:
        for batch in calib.batches():
            if fixed is not None and batch.shape[0] != fixed:
                logger.warning("model has a fixed batch size of %d: the last %d image(s) were not used",
                               fixed, batch.shape[0])
                continue
            yield np.ascontiguousarray(batch, dtype=np.float32)

    return batches


def batch_rows(loaded: LoadedModel, options: CalibrationOptions) -> tuple[int | None, int]:
    """(images, batch size) of the passes :func:`open_batches` makes: where shards must be cut."""
    calib, fixed = _calibration(loaded, options, None)
    return calib.total, fixed or options.batch_size


def _calibration(loaded: LoadedModel, options: CalibrationOptions, rows: tuple[int, int] | None):
    if isinstance(options.data, Iterator):
        raise MBSError("reconstruction reads its data several times; pass a path, an array or a list, "
                       "not a generator")
    model_input = loaded.input
    fixed = None if loaded.batch_dynamic else model_input.shape[0]
    if options.data is None and options.synthetic is None:
        raise MBSError("reconstruction needs calibration images — pass --data PATH (image folder, .npy/.npz)")
    calib = open_calibration(options.data, shape=model_input.shape, layout=model_input.layout,
                             preprocess=options.normalisation(loaded),
                             synthetic=options.synthetic, max_images=options.max_images,
                             batch_size=fixed or options.batch_size, seed=options.seed,
                             order=Order(rows=rows) if rows is not None else None)
    return calib, fixed


class Probe:
    """A session computing some intermediate tensors of a model; ``run(batch)`` -> {name: array}."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], *, input_name: str,
                 provider: str = "auto", threads: int | None = None) -> None:
        self.input_name = input_name
        self.tensors = list(dict.fromkeys(tensors))
        inner = [t for t in self.tensors if t != input_name]
        self.session = None
        if inner:
            self.session = make_session(expose(model, inner, keep_outputs=False), choose_provider(provider),
                                        threads=threads, spinning=False)
        self.inner = inner

    def run(self, batch: np.ndarray) -> Mapping[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.session is not None:
            values = self.session.run(self.inner, {self.input_name: batch})
            out.update(zip(self.inner, values))
        if self.input_name in self.tensors:
            out[self.input_name] = batch
        return out


class SampledProbe:
    """A session giving tensors of a model at positions chosen per run (:func:`onnxmbs.graph.edit.gather_at`):
    ``run(batch, indices)`` -> one ``(rows, C)`` array per tap, so whole tensors never leave onnxruntime."""

    def __init__(self, model: onnx.ModelProto, taps: Sequence[tuple[str, int | None]], *, input_name: str,
                 provider: str = "auto", threads: int | None = None) -> None:
        self.input_name, self.count = input_name, len(taps)
        self.session = make_session(gather_at(model, taps), choose_provider(provider), threads=threads, spinning=False)
        self.names = [f"sampled_{i}" for i in range(len(taps))]

    def run(self, batch: np.ndarray, indices: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = {self.input_name: batch, **{f"at_{i}": idx for i, idx in enumerate(indices)}}
        return self.session.run(self.names, feeds)


class Store:
    """Arrays by key, kept in memory up to ``budget`` bytes and spilled to a temporary file beyond,
    so what the reconstruction keeps between passes does not grow its memory with the images."""

    def __init__(self, budget: int = 16 << 20) -> None:
        self.budget, self.used = budget, 0
        self.memory: dict[Any, np.ndarray] = {}
        self.disk: dict[Any, tuple[int, tuple[int, ...], np.dtype]] = {}
        self.file: Any = None
        self.size = 0

    def put(self, key: Any, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value)
        if self.used + value.nbytes <= self.budget:
            self.memory[key] = value
            self.used += value.nbytes
            return
        if self.file is None:
            import tempfile

            self.file = tempfile.TemporaryFile(prefix="onnxmbs-reconstruct-")
        self.file.seek(self.size)
        self.file.write(value.tobytes())
        self.disk[key] = (self.size, value.shape, value.dtype)
        self.size += value.nbytes

    def get(self, key: Any) -> np.ndarray:
        if key in self.memory:
            return self.memory[key]
        offset, shape, dtype = self.disk[key]
        value = np.empty(shape, dtype)
        self.file.seek(offset)
        self.file.readinto(memoryview(value.reshape(-1).view(np.uint8)))
        return value

    def drop(self, key: Any) -> None:
        value = self.memory.pop(key, None)
        if value is not None:
            self.used -= value.nbytes
        self.disk.pop(key, None)
        if not self.disk and self.file is not None:
            self.size = 0  # nothing on disk is read again: reuse the file from the start

    def close(self) -> None:
        self.memory.clear()
        self.disk.clear()
        if self.file is not None:
            self.file.close()
            self.file = None


class Segments:
    """The compact model run piece by piece: each pass runs only the nodes the requested tensors still
    need, starting from the tensors earlier passes kept (in a :class:`Store`), so every node runs once,
    with the weights that are final when it runs (the reconstruction fits a layer before its readers run)."""

    def __init__(self, model: onnx.ModelProto, *, input_name: str, provider: str, store: Store,
                 threads: int | None = None) -> None:
        self.input_name, self.provider, self.store, self.threads = input_name, provider, store, threads
        graph = model.graph
        self.producer = {t: i for i, n in enumerate(graph.node) for t in n.output if t}
        self.readers: dict[str, set[int]] = {}
        for i, n in enumerate(graph.node):
            for t in n.input:
                self.readers.setdefault(t, set()).add(i)
        self.inits = {t.name for t in graph.initializer}
        self.types = {v.name: v.type for v in graph.input}
        self.done: set[int] = set()
        self.kept: set[str] = set()  # tensors in the store, for every batch
        self.batches = 0

    def _nodes(self, needed: Sequence[str]) -> set[int]:
        todo, nodes = [t for t in needed], set()
        while todo:
            t = todo.pop()
            if not t or t in self.kept or t == self.input_name or t in self.inits:
                continue
            i = self.producer.get(t)
            if i is None or i in self.done:
                raise MBSError(f"reconstruction lost tensor '{t}' between passes — report this as a bug")
            if i not in nodes:
                nodes.add(i)
                todo.extend(self._model.graph.node[i].input)
        return nodes

    def _segment(self, nodes: set[int], outputs: list[str]) -> tuple[Any, list[str]]:
        graph = self._model.graph
        chosen = [graph.node[i] for i in sorted(nodes)]
        made = {t for n in chosen for t in n.output}
        leaves = list(dict.fromkeys(t for n in chosen for t in n.input if t and t not in made and t not in self.inits))
        used = {t for n in chosen for t in n.input}
        inits = [t for t in graph.initializer if t.name in used]
        ins = [onnx.ValueInfoProto(name=t, type=self.types[t]) for t in leaves]
        outs = [onnx.ValueInfoProto(name=t) for t in outputs]
        part = onnx.helper.make_graph(chosen, "segment", ins, outs, initializer=inits)
        proto = onnx.helper.make_model(part, opset_imports=self._model.opset_import, ir_version=self._model.ir_version)
        return make_session(proto, self.provider, threads=self.threads, spinning=False), leaves

    def run(self, model: onnx.ModelProto, needed: Sequence[str],
            batches: Callable[[], Iterator[np.ndarray]]) -> Iterator[Mapping[str, np.ndarray]]:
        """One pass: per batch, ``needed`` (compact tensors whose producers' weights are final) by name."""
        self._model = model
        needed = list(dict.fromkeys(needed))
        nodes = self._nodes(needed)
        made = [t for i in sorted(nodes) for t in model.graph.node[i].output if t]
        after = self.done | nodes
        keep = [t for t in made if self.readers.get(t, set()) - after]
        fresh = [t for t in needed if t in made]
        outputs = list(dict.fromkeys(keep + fresh))
        session, leaves = self._segment(nodes, outputs) if nodes else (None, [])
        source = batches() if (self.input_name in leaves or self.input_name in needed or not self.batches) else None
        b = 0
        for b, batch in enumerate(source if source is not None else (None for _ in range(self.batches))):
            got: dict[str, np.ndarray] = {}
            if session is not None:
                feeds = {t: batch if t == self.input_name else self.store.get((t, b)) for t in leaves}
                got.update(zip(outputs, session.run(outputs, feeds)))
            for t in keep:
                self.store.put((t, b), got[t])
                self.types.setdefault(t, onnx.helper.make_tensor_type_proto(
                    onnx.helper.np_dtype_to_tensor_dtype(got[t].dtype), None))
            values = {t: got[t] if t in got else batch if t == self.input_name else self.store.get((t, b))
                      for t in needed}
            yield values
        if source is not None and not self.batches:
            self.batches = b + 1
        self._finish(nodes, keep)

    def _finish(self, nodes: set[int], keep: list[str]) -> None:
        self.done |= nodes
        self.kept |= set(keep)
        for t in [t for t in self.kept if not self.readers.get(t, set()) - self.done]:
            self.kept.discard(t)
            for b in range(self.batches):
                self.store.drop((t, b))
