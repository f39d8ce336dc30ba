"""Export zoo models to ONNX and prove the file computes what the framework does.

Both exporters write atomically (a temp file in the target directory, then
``os.replace``) and, before returning, run the ONNX file in onnxruntime on a
deterministic random batch of 2 and compare it with the framework's own output
(:func:`onnxmbs.runtime.session.outputs_close`: rtol 1e-3, atol 1e-4 × the output's scale).
A mismatch raises :class:`MBSError` and leaves no file.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from onnxmbs.errors import MBSError
from onnxmbs.runtime.session import outputs_close
from onnxmbs.files import atomic_path

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

CHECK_SEED = 20190616
_NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch.export", "torch.fx", "tf2onnx", "tensorflow")


def _sample(shape: Sequence[int]) -> np.ndarray:
    """A deterministic batch of 2 in [0, 1) with the given per-sample shape."""
    import numpy as np

    rng = np.random.default_rng(CHECK_SEED)
    return rng.random((2, *shape), dtype=np.float32)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter: python warnings, library loggers and stdout prints."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)




def _check_finite_reference(expected: np.ndarray, what: str) -> None:
    import numpy as np

    if not np.all(np.isfinite(expected)):
        raise MBSError(f"{what} gives a non-finite output (NaN/inf) in the framework itself on a random batch — "
                       "initialise it so it is finite (e.g. zero-init the last BatchNorm γ of each residual "
                       "branch) or load trained weights before exporting")


def check_onnx(path: Path, x: np.ndarray, expected: np.ndarray, *, what: str) -> None:
    """Run ``path`` in onnxruntime on ``x`` and compare with ``expected``; raise on mismatch."""
    import numpy as np

    from onnxmbs.runtime.session import open_session

    try:
        sess = open_session(path)
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as exc:  # onnxruntime raises many types; all mean a broken export
        raise MBSError(f"the exported ONNX of {what} does not run in onnxruntime ({exc}) — "
                       "report the model; try another opset") from exc
    _check_finite_reference(expected, what)
    if not np.all(np.isfinite(got)):
        raise MBSError(f"the exported ONNX of {what} gives a non-finite output (NaN/inf) in onnxruntime where the "
                       "framework's is finite — report the model; try another opset")
    if not outputs_close(got, expected):
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("nan")
        raise MBSError(f"the exported ONNX of {what} differs from the framework output "
                       f"(shape {got.shape} vs {expected.shape}, max |diff| {diff:.3g}) — "
                       "check for training-mode layers or unsupported ops")
    log.debug("%s: onnxruntime matches the framework on a batch of 2", what)


def _set_metadata(path: Path, metadata: Mapping[str, str] | None) -> None:
    """Record ``metadata`` (e.g. the preprocessing, see onnxmbs.data.normalisation) in the file's metadata_props."""
    if not metadata:
        return
    import onnx

    from onnxmbs.data.normalisation import set_metadata

    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    onnx.save_model(proto, str(path))


def export_torch(model, input_shape: Sequence[int], path: str | os.PathLike[str], *, opset: int = 18,
                 dynamo: bool = True, metadata: Mapping[str, str] | None = None, external_data: bool = False,
                 dynamic_hw: bool = False) -> Path:
    """Export a torch module (eval mode) with a dynamic batch dimension and verify it.

    ``input_shape`` is one sample's shape with or without the batch dim, e.g.
    ``(1, 3, 32, 32)`` or ``(3, 32, 32)``.  ``dynamo=False`` uses the older
    TorchScript exporter: about 10x faster on deep nets (the tests use it), same
    convs, possibly extra shape arithmetic (Shape/Gather) around reshapes.
    ``external_data``: the weights go to ``<path>.data`` beside the file (written atomically, as
    ``onnxmbs compact`` writes them). ``dynamic_hw``: height and width are dynamic too.
    """
    if external_data:
        return _export_external(model, input_shape, Path(path), opset=opset, dynamo=dynamo, metadata=metadata,
                                dynamic_hw=dynamic_hw)
    import torch

    shape = tuple(int(s) for s in input_shape)
    shape = shape[1:] if len(shape) == 4 else shape
    model = model.eval()
    x = _sample(shape)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    what = type(model).__name__
    _check_finite_reference(expected, what)
    with atomic_path(path, suffix=".onnx") as tmp, _quiet():
        try:
            _torch_onnx_export(model, torch.from_numpy(x), tmp, opset=opset, dynamo=dynamo, dynamic_hw=dynamic_hw)
        except Exception as exc:
            raise MBSError(f"torch.onnx.export failed for {what}: {exc} — "
                           "check the model is exportable with torch.export") from exc
        _unshare_parameters(tmp, model)
        _set_metadata(tmp, metadata)
        check_onnx(tmp, x, expected, what=what)
    log.info("exported %s to %s", what, path)
    return Path(path)


def _export_external(model, input_shape: Sequence[int], path: Path, **how) -> Path:
    """Export and verify in a scratch folder, then write the file with its weights in ``<path>.data``."""
    import tempfile

    import onnx

    from onnxmbs.compact.writer import save_model

    with tempfile.TemporaryDirectory(prefix=".onnxmbs-export.") as scratch:
        staged = export_torch(model, input_shape, Path(scratch) / path.name, **how)
        save_model(onnx.load(str(staged)), path, external=True)
    return path


def _unshare_parameters(path: Path, model) -> None:
    """One initializer per torch parameter again where the dynamo exporter merged equal ones.

    Its optimizer stores identical small tensors once (an untrained model's LayerNorm γ = 1 and
    β = 0, ConvNeXt's layer scale γ = 1e-6), so the file would hold, and onnxmbs count, fewer
    parameters than the model has. A merged initializer read as a parameter by several nodes gets a
    copy per reader, as many as the model has distinct parameters of that size and value (a
    parameter the model really shares stays shared).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from onnxmbs.ops.registry import param_inputs

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in proto.graph.node:
        rules = param_inputs(node.op_type)
        for idx in rules.inputs if rules else ():
            if idx < len(node.input) and node.input[idx] in inits:
                readers.setdefault(node.input[idx], []).append((node, idx))
    shared = {name: uses for name, uses in readers.items() if len(uses) > 1}
    if not shared:
        return
    owners: dict[bytes, int] = {}
    for p in model.parameters():
        key = np.ascontiguousarray(p.detach().cpu().numpy(), np.float32).tobytes()
        owners[key] = owners.get(key, 0) + 1
    for name, uses in shared.items():
        value = numpy_helper.to_array(inits[name])
        copies = min(len(uses), owners.get(np.ascontiguousarray(value, np.float32).tobytes(), 0))
        for n, (node, idx) in enumerate(uses[1:copies], start=1):
            node.input[idx] = f"{name}.{n}"
            proto.graph.initializer.append(numpy_helper.from_array(value, f"{name}.{n}"))
    log.debug("un-merged %d shared initializers", len(shared))
    onnx.save_model(proto, str(path))


def _torch_onnx_export(model, x, tmp: Path, *, opset: int, dynamo: bool, dynamic_hw: bool = False) -> None:
    import torch

    names = {"input_names": ["input"], "output_names": ["output"], "opset_version": opset, "verbose": False}
    if dynamo:
        dims = {0: torch.export.Dim("batch", min=1, max=4096)}
        if dynamic_hw:
            dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
        torch.onnx.export(model, (x,), str(tmp), dynamo=True, dynamic_shapes=(dims,),
                          external_data=False, **names)
    else:
        axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
        torch.onnx.export(model, (x,), str(tmp), dynamo=False,
                          dynamic_axes={"input": axes, "output": {0: "batch"}}, **names)


def _name_batch_dim(proto) -> None:
    """tf2onnx names the dynamic batch dim ``unk__N``; call it ``batch`` as the torch exports do."""
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def export_keras(model, path: str | os.PathLike[str], *, opset: int = 17,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Export a Keras 3 model with input signature ``(None, H, W, C)`` named ``input``; verify it."""
    import numpy as np

    import onnx

    from onnxmbs.runtime.frameworks import import_keras

    import_keras(tf2onnx=True)
    with _quiet():
        import tensorflow as tf
        import tf2onnx

    shape = tuple(int(s) for s in model.inputs[0].shape[1:])
    x = _sample(shape)
    expected = np.asarray(model(x, training=False))
    what = str(model.name)
    _check_finite_reference(expected, what)
    from onnxmbs.data.normalisation import set_metadata

    spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
    with atomic_path(path, suffix=".onnx") as tmp, _quiet():
        try:
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        except Exception as exc:
            raise MBSError(f"tf2onnx failed for Keras model {what}: {exc} — "
                           "try another opset or simpler layers") from exc
        _name_batch_dim(proto)
        set_metadata(proto, metadata or {})
        onnx.save_model(proto, str(tmp))
        check_onnx(tmp, x, expected, what=what)
    log.info("exported %s to %s", what, path)
    return Path(path)
