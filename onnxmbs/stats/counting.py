"""Statistics: per-channel non-zero counts of every activation tap, on onnxruntime.

A copy of the graph gets, per tapped ReLU output, a small counting subgraph whose only
output is a vector of per-channel counts for the batch; the activations themselves never
leave the runtime, and the graph's own outputs are dropped so that the classifier is not
run. Counts are accumulated as exact int64 in numpy, so memory does not grow with the
number of images.

The counting subgraph (:func:`_count_nodes`) is ``HardSigmoid(alpha=2^126, beta=0)`` ->
``GlobalAveragePool``: min(1, max(0, 2^126·x)) is exactly 1 for every normal positive float
(overflow to inf clips to 1) and 0 for zero, so ×H·W and rounding gives the integer count of each
(image, channel). The session runs with denormals flushed to zero, so the counts are exact for
the values that run computes (a float32 denormal, < 2^-126, counts as zero). Unlike the naive
``Greater -> Cast -> ReduceSum`` tap, both ops run in onnxruntime's blocked NCHWc layout on CPU
(HardSigmoid is layout-agnostic, GlobalAveragePool has an NCHWc kernel), so the tapped tensor is
not reordered, and each tap sits right after the node producing its tensor, while that tensor is
still in cache. The small per-tap results are concatenated into the graph's one output, so a run
costs one reorder and one fetch rather than one per tap (ResNet-50 batch 1: 0.78-0.84x -> 0.91-0.93x
of plain inference). A depthwise 1×1 Conv with a fused Clip computes the same but measured slower.
tools/bench_statistics.py measures both taps against plain inference.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxmbs.graph.activations import Tap
from onnxmbs.graph.analysis import Analysis
from onnxmbs.errors import MBSError
from onnxmbs.progress import progress_bar
from onnxmbs.runtime.session import choose_provider, first_line, make_session, provider_session


SCALE = float(2.0 ** 126)  # lifts the smallest normal float32 (2^-126) to 1
METHODS = ("nchwc", "naive")


@dataclass(frozen=True)
class TapCounts:
    tensor: str
    nonzero: np.ndarray = field(repr=False)  # int64 per channel, summed over images and positions
    per_image: int  # elements per channel per image (H*W)


@dataclass(frozen=True)
class Statistics:
    images: int
    provider: str
    taps: Mapping[str, TapCounts]  # tap tensor -> counts
    seconds: float = 0.0

    def p_nonzero(self, tensor: str, channels: slice = slice(None)) -> float:
        t = self.taps[tensor]
        counts = t.nonzero[channels]
        total = self.images * t.per_image * len(counts)
        return float(counts.sum()) / total if total else 1.0

    def channel_rates(self, tensor: str, channels: slice = slice(None)) -> np.ndarray:
        t = self.taps[tensor]
        return t.nonzero[channels] / max(self.images * t.per_image, 1)


# ------------------------------------------------------------ instrumentation
def _count_nodes(tap: Tap, out: str, method: str, prefix: str) -> tuple[list, list]:
    """Nodes and initializers that turn ``tap.tensor`` into per-(image, channel) counts/means."""
    x = tap.tensor
    if method == "naive":
        return ([helper.make_node("Greater", [x, f"{prefix}zero"], [f"{prefix}gt"]),
                 helper.make_node("Cast", [f"{prefix}gt"], [f"{prefix}f"], to=TensorProto.FLOAT),
                 helper.make_node("ReduceSum", [f"{prefix}f", f"{prefix}axes"], [out], keepdims=0)],
                [numpy_helper.from_array(np.zeros((), np.float32), f"{prefix}zero"),
                 numpy_helper.from_array(np.array([0, 2, 3], np.int64), f"{prefix}axes")])
    nodes = [helper.make_node("HardSigmoid", [x], [f"{prefix}ind"], alpha=SCALE, beta=0.0),
             helper.make_node("GlobalAveragePool", [f"{prefix}ind"], [out])]
    return nodes, []


def _to_nchw(tap: Tap, prefix: str) -> tuple[Tap, list]:
    """Taps on NHWC tensors (tf2onnx tails) are read through a Transpose to channel axis 1."""
    if tap.channel_axis == 1:
        return tap, []
    perm = [0, tap.channel_axis] + [a for a in (1, 2, 3) if a != tap.channel_axis]
    node = helper.make_node("Transpose", [tap.tensor], [f"{prefix}nchw"], perm=perm)
    return Tap(tap.node, f"{prefix}nchw", 1), [node]


@dataclass(frozen=True)
class Instrumented:
    """The counting copy of a model: one output, ``output``, holding every tap's counts side by side."""
    model: onnx.ModelProto = field(repr=False)
    output: str
    method: str
    slices: Mapping[str, slice]  # tap tensor -> its channels within the output
    per_image: np.ndarray = field(repr=False)  # positions per image of each output channel (int64)
    input: str = ""  # the model input's name
    image_shape: tuple[int, ...] = ()  # one image, model layout
    fixed_batch: int | None = None  # the batch size of a model exported with a fixed one

    def counts(self, result: np.ndarray) -> np.ndarray:
        """Exact int64 counts per output channel, summed over the batch, from one run's output."""
        if not np.isfinite(result).all():
            raise MBSError("the model produced NaN activations on this data — check the preprocessing "
                           "(--preprocess, --mean/--std) and that the model runs correctly in onnxruntime")
        if self.method == "naive":
            return np.rint(result).astype(np.int64)
        means = result.reshape(result.shape[0], -1).astype(np.float64)  # (batch, C): fraction of positions
        return np.rint(means * self.per_image).astype(np.int64).sum(axis=0)

    def statistics(self, counts: np.ndarray, *, images: int, provider: str, seconds: float = 0.0) -> Statistics:
        """Per-tap :class:`Statistics` from the summed counts vector (this copy's output order)."""
        if images == 0:
            raise MBSError("the calibration data yielded no images — check --data")
        taps = {name: TapCounts(name, counts[cut].copy(), int(self.per_image[cut.start]))
                for name, cut in self.slices.items()}
        return Statistics(images=images, provider=provider, taps=taps, seconds=seconds)

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(self.image_shape):
            raise MBSError(f"calibration batch has shape {tuple(batch.shape)}, the model expects (N, "
                           f"{', '.join(map(str, self.image_shape))}) — check the data's layout and size")
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            raise MBSError(f"the model's batch size is fixed at {self.fixed_batch}; use --batch-size {self.fixed_batch}")
        return np.ascontiguousarray(batch, dtype=np.float32)


OUTPUT = "onnxmbs_counts"


def instrument(analysis: Analysis, *, method: str = "nchwc") -> Instrumented:
    """A copy of the model whose single output is the per-channel counts of every tap (at least one)."""
    if method not in METHODS:
        raise MBSError(f"unknown counting method {method!r}; choose one of {METHODS}")
    if not _unique_taps(analysis):
        raise MBSError(f"{analysis.loaded.path} has no activation to count — plan it without statistics "
                       "(every p = 1)")
    loaded = analysis.loaded
    model = copy.deepcopy(loaded.model)
    graph = model.graph
    if loaded.batch_dynamic:
        graph.input[[i.name for i in graph.input].index(loaded.input.name)].type.tensor_type.shape.dim[0].dim_param = "N"
    del graph.output[:]
    after: dict[str, list] = {}
    parts, slices, per_image, offset = [], {}, [], 0
    for i, tap in enumerate(_unique_taps(analysis)):
        prefix = f"onnxmbs_tap{i}_"
        shape = loaded.shapes[tap.tensor]
        nchw_tap, pre = _to_nchw(tap, prefix)
        nodes, inits = _count_nodes(nchw_tap, f"{prefix}count", method, prefix)
        after[tap.tensor] = pre + nodes
        graph.initializer.extend(inits)
        channels = shape[tap.channel_axis]
        slices[tap.tensor] = slice(offset, offset + channels)
        per_image += [math.prod(shape) // (shape[0] * channels)] * channels
        parts.append(f"{prefix}count")
        offset += channels
    _place_after_producers(graph, after)
    # one Concat of the small per-tap results: a single reorder and a single fetch instead of one per tap
    graph.node.append(helper.make_node("Concat", parts, [OUTPUT], axis=0 if method == "naive" else 1))
    dims = [offset] if method == "naive" else ["N" if loaded.batch_dynamic else loaded.input.shape[0], offset, 1, 1]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, dims))
    return Instrumented(model=model, output=OUTPUT, method=method, slices=slices,
                        per_image=np.asarray(per_image, np.int64), input=loaded.input.name,
                        image_shape=tuple(loaded.input.shape[1:]),
                        fixed_batch=None if loaded.batch_dynamic else loaded.input.shape[0])


def _place_after_producers(graph: onnx.GraphProto, after: Mapping[str, list]) -> None:
    """Each tap right after the node producing its tensor (kept topological, better cache reuse)."""
    ordered = []
    for node in graph.node:
        ordered.append(node)
        for out in node.output:
            ordered.extend(after.get(out, ()))
    del graph.node[:]
    graph.node.extend(ordered)


def _unique_taps(analysis: Analysis) -> list[Tap]:
    return list({t.tensor: t for t in analysis.taps.values() if t is not None}.values())


# ------------------------------------------------------------ the pass
class Counter:
    """One onnxruntime session over a counting copy: :meth:`run` gives one batch's exact counts."""

    def __init__(self, counting: Instrumented, provider: str, *, threads: int | None = None,
                 source: onnx.ModelProto | None = None, path: str = "the model") -> None:
        self.counting = counting
        self.session = _counting_session(counting, provider, threads=threads, source=source, path=path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = self.counting.check_batch(batch)
        (result,) = self.session.run([self.counting.output], {self.counting.input: batch})
        return self.counting.counts(result)


def _counting_session(counting: Instrumented, provider: str, *, threads: int | None, source: onnx.ModelProto | None,
                      path: str):
    """The session of the counting copy; when only the copy fails to load, the fault is onnxmbs', not the model's."""
    try:
        return provider_session(counting.model, provider, threads=threads, flush_denormals=True)
    except Exception as exc:
        if source is not None:
            make_session(source, provider)  # the user's model itself: its own error blames it
        raise MBSError(f"onnxmbs built an invalid counting copy of {path} ({first_line(exc)}); "
                       "the model itself loads in onnxruntime — this is an onnxmbs bug, please report it "
                       "(--statistic paper counts fewer activations and may avoid it)") from None


class Monitor(Protocol):
    """Watches a pass batch by batch (e.g. for convergence); returning True stops the pass."""

    stopped: bool  # True once it has asked to stop

    def start(self, counting: Instrumented) -> None: ...

    def __call__(self, counts: np.ndarray, images: int) -> bool: ...

    def result(self) -> object: ...  # what it concluded (a stats.measure.Convergence)


def collect_statistics(analysis: Analysis, batches: Iterable[np.ndarray], *, provider: str = "auto",
                       method: str = "nchwc", progress: bool | None = None, total: int | None = None,
                       monitor: Monitor | None = None) -> Statistics:
    """Run ``batches`` through the instrumented model and count, per channel of every tap, the non-zero
    (ReLU family) or positive (other activations) outputs. A model without taps is not run at all.

    ``monitor`` sees each batch's counts in order and may stop the pass early.
    """
    provider = choose_provider(provider)
    if not _unique_taps(analysis):
        return _no_taps(analysis, batches, provider=provider)
    counting = instrument(analysis, method=method)
    counter = Counter(counting, provider, source=analysis.loaded.model, path=analysis.loaded.path)
    if monitor is not None:
        monitor.start(counting)
    total_counts = np.zeros(len(counting.per_image), np.int64)
    images, start = 0, time.perf_counter()
    bar = _progress(progress, total)
    for batch in batches:
        counts = counter.run(batch)
        total_counts += counts
        images += batch.shape[0]
        if bar is not None:
            bar.update(batch.shape[0])
        if monitor is not None and monitor(counts, batch.shape[0]):
            break
    if bar is not None:
        bar.close()
    return counting.statistics(total_counts, images=images, provider=provider, seconds=time.perf_counter() - start)


def _no_taps(analysis: Analysis, batches: Iterable[np.ndarray], *, provider: str) -> Statistics:
    """A model with no activation to count: nothing runs; the images are only checked and counted."""
    images, start = 0, time.perf_counter()
    for batch in batches:
        images += _check_batch(batch, analysis).shape[0]
    if images == 0:
        raise MBSError("the calibration data yielded no images — check --data")
    return Statistics(images=images, provider=provider, taps={}, seconds=time.perf_counter() - start)


def _check_batch(batch: np.ndarray, analysis: Analysis) -> np.ndarray:
    expected = analysis.loaded.input.shape[1:]
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(expected):
        raise MBSError(f"calibration batch has shape {tuple(batch.shape)}, the model expects (N, "
                       f"{', '.join(map(str, expected))}) — check the data's layout and size")
    if not analysis.loaded.batch_dynamic and batch.shape[0] != analysis.loaded.input.shape[0]:
        raise MBSError(f"the model's batch size is fixed at {analysis.loaded.input.shape[0]}; "
                       f"use --batch-size {analysis.loaded.input.shape[0]}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def _progress(enabled: bool | None, total: int | None):
    return progress_bar(enabled, total=total, unit="img", desc="statistics")
