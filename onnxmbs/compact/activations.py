"""Reconstruction, part 1 — intermediate tensors of a model, batch by batch, from onnxruntime.

:class:`Probe` exposes the requested tensors as the outputs of a copy of the model cut down to
the nodes they need (:func:`onnxmbs.graph.edit.expose`), runs it on one batch at a time and
returns the tensors by name, so only one batch's activations of the requested tensors are ever
held.

:func:`open_batches` opens the reconstruction data for a model input: a function that
starts a fresh pass over the data each time it is called (the reconstruction makes one
pass per stage of layers), as float32 batches in the model's layout.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnxmbs.errors import MBSError
from onnxmbs.graph.edit import expose
from onnxmbs.graph.load import LoadedModel
from onnxmbs.data.calibration import open_calibration
from onnxmbs.runtime.session import choose_provider, make_session
from onnxmbs.stats.measure import CalibrationOptions

logger = logging.getLogger(__name__)


def open_batches(loaded: LoadedModel, options: CalibrationOptions) -> Callable[[], Iterator[np.ndarray]]:
    """A function that starts a new pass over the data: float32 batches in ``loaded``'s layout, normalised
    by the one rule (``options``' flags, else the model's metadata, else imagenet).

    A model with a fixed batch size gets batches of exactly that size (a short last batch
    is dropped with a warning).
    """
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
                             batch_size=fixed or options.batch_size, seed=options.seed)

    def batches() -> Iterator[np.ndarray]:
        for batch in calib.batches():
            if fixed is not None and batch.shape[0] != fixed:
                logger.warning("model has a fixed batch size of %d: the last %d image(s) were not used",
                               fixed, batch.shape[0])
                continue
            yield np.ascontiguousarray(batch, dtype=np.float32)

    return batches


class Probe:
    """A session computing some intermediate tensors of a model; ``run(batch)`` -> {name: array}."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], *, input_name: str,
                 provider: str = "auto") -> None:
        self.input_name = input_name
        self.tensors = list(dict.fromkeys(tensors))
        inner = [t for t in self.tensors if t != input_name]
        self.session = None
        if inner:
            self.session = make_session(expose(model, inner, keep_outputs=False), choose_provider(provider))
        self.inner = inner

    def run(self, batch: np.ndarray) -> Mapping[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.session is not None:
            values = self.session.run(self.inner, {self.input_name: batch})
            out.update(zip(self.inner, values))
        if self.input_name in self.tensors:
            out[self.input_name] = batch
        return out
