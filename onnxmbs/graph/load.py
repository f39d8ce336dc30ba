"""Load: read an ONNX CNN, fix its input size, find its layout, infer shapes.

The returned :class:`LoadedModel` holds a shape-inferred *copy*; the user's file and
the proto passed in are never modified.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from onnxmbs.errors import MBSError
from onnxmbs.runtime.session import open_session
from onnxmbs.graph.folding import StaticValues
from onnxmbs.graph.proto import attr, external_locations
from onnxmbs.graph.record import ModelRecord

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelInput:
    """The model's image input: name, full static shape (batch first) and layout."""

    name: str
    shape: Shape
    layout: str  # "NCHW" | "NHWC"

    @property
    def hw(self) -> tuple[int, int]:
        return (self.shape[2], self.shape[3]) if self.layout == "NCHW" else (self.shape[1], self.shape[2])

    @property
    def channels(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]

    @property
    def L(self) -> int:  # noqa: N802 - the paper's name
        return min(self.hw)


@dataclass(frozen=True)
class LoadedModel:
    """A shape-inferred copy of the model plus what later stages need to know about it."""

    model: onnx.ModelProto = field(repr=False)
    path: str
    sha256: str
    input: ModelInput
    shapes: dict[str, Shape] = field(repr=False)
    constants: dict[str, np.ndarray] = field(repr=False)
    batch_dynamic: bool = False
    metadata: dict[str, str] = field(default_factory=dict, repr=False)  # the file's metadata_props

    @property
    def graph(self) -> onnx.GraphProto:
        return self.model.graph

    @functools.cached_property
    def static_values(self) -> StaticValues:
        """The constants plus what shape computations give before run time (e.g. TorchScript's chunk bounds)."""
        return StaticValues(self.graph, self.shapes, self.constants, batch_dynamic=self.batch_dynamic)

    def record(self) -> ModelRecord:
        """What a plan, stats file or blocks plan says about the model it was made from."""
        return ModelRecord(path=self.path, sha256=self.sha256, input=self.input.name, shape=tuple(self.input.shape),
                           layout=self.input.layout, L=self.input.L)


def load_model(source: str | Path | onnx.ModelProto, *, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Load ``source`` (path or proto), fix the input to ``input_shape`` where needed, infer shapes."""
    proto, path, digest = _read(source)
    graph_inputs = _data_inputs(proto)
    if len(graph_inputs) != 1:
        names = ", ".join(i.name for i in graph_inputs) or "none"
        raise MBSError(f"model has {len(graph_inputs)} data inputs ({names}); "
                       "onnxmbs needs exactly one image input — "
                       "export the model with a single NCHW/NHWC image tensor as input")
    gin = graph_inputs[0]
    dims, batch_dynamic = _static_input_shape(gin, input_shape, _guess_layout(proto, gin, _declared_dims(gin)))
    model = copy.deepcopy(proto)
    _set_input_dims(model, gin.name, dims)
    constants = _constants(model)
    shapes = _infer_shapes(model, gin.name, dims)
    layout = _detect_layout(model, gin.name, dims, constants)
    return LoadedModel(model=model, path=path, sha256=digest, input=ModelInput(gin.name, dims, layout),
                       shapes=shapes, constants=constants, batch_dynamic=batch_dynamic,
                      metadata={p.key: p.value for p in proto.metadata_props})


def _read(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str, str]:
    if isinstance(source, onnx.ModelProto):
        data = source.SerializeToString()
        return source, "<in-memory>", hashlib.sha256(data).hexdigest()
    path = Path(source)
    if not path.is_file():
        raise MBSError(f"model file not found: {path} — check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        locations = external_locations(proto.graph)
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        raise MBSError(f"cannot read {path} as an ONNX model ({type(exc).__name__}: {str(exc)[:120]}) — "
                       "is it a valid .onnx file with its external-data files next to it?") from None
    if not proto.graph.node:
        raise MBSError(f"{path} holds no graph nodes — is it a valid .onnx model?")
    return proto, str(path), _digest(path, locations)


def _digest(path: Path, locations: list[str]) -> str:
    """sha256 of the model file, then of each external-data file (its name, then its bytes) in name order:
    a model whose weights change in its ``.data`` file gets a new digest. Without external data this is
    the sha256 of the ``.onnx`` file alone."""
    digest = hashlib.sha256(path.read_bytes())
    for location in locations:
        digest.update(location.encode())
        with open(path.parent / location, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _declared_dims(gin: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in gin.type.tensor_type.shape.dim]


def _guess_layout(model: onnx.ModelProto, gin: onnx.ValueInfoProto, dims: list[int | None]) -> str:
    """The layout before shapes are known: a Transpose(0,3,1,2) on the input, else where the channels are."""
    for node in model.graph.node:
        if gin.name in node.input and node.op_type == "Transpose":
            perm = list(attr(node, "perm", []))
            return "NHWC" if perm == [0, 3, 1, 2] else "NCHW"
    if len(dims) == 4 and dims[1] is None and dims[3] is not None:
        return "NHWC"
    return "NCHW"


def _example_shape(dims: list[int | None], layout: str) -> str:
    channels = (dims[1] if layout == "NCHW" else dims[3]) or 3
    return f"1,{channels},224,224" if layout == "NCHW" else f"1,224,224,{channels}"


@dataclass(frozen=True)
class DeclaredInput:
    """The image input as the file declares it (None = dynamic), read without loading weights."""

    name: str
    dims: tuple[int | None, ...]
    layout: str

    @property
    def dynamic_hw(self) -> bool:
        hw = self.dims[2:] if self.layout == "NCHW" else self.dims[1:3]
        return len(self.dims) == 4 and any(d is None for d in hw)

    @property
    def channels(self) -> int | None:
        return self.dims[1] if self.layout == "NCHW" else self.dims[3]

    def with_hw(self, hw: tuple[int, int]) -> Shape:
        """A full input shape (batch 1 where dynamic) with the fixed dims kept and the dynamic H/W from ``hw``."""
        c = self.channels or 3
        shape = (1, c, *hw) if self.layout == "NCHW" else (1, *hw, c)
        return tuple(d if d is not None else s for d, s in zip(self.dims, shape))


def declared_input(source: str | Path | onnx.ModelProto) -> DeclaredInput | None:
    """The model's declared image input, or None when the file cannot tell (load_model then says why)."""
    try:
        proto = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: load_model reports it properly
        return None
    inputs = _data_inputs(proto)
    if len(inputs) != 1:
        return None
    dims = _declared_dims(inputs[0])
    return DeclaredInput(inputs[0].name, tuple(dims), _guess_layout(proto, inputs[0], dims))


def _static_input_shape(gin: onnx.ValueInfoProto, input_shape: tuple[int, ...] | None,
                        layout: str = "NCHW") -> tuple[Shape, bool]:
    dims = _declared_dims(gin)
    if len(dims) != 4:
        raise MBSError(f"input '{gin.name}' has rank {len(dims)}; onnxmbs handles CNNs with one 4-D image input "
                       "(NCHW or NHWC) — this does not look like a CNN")
    batch_dynamic = dims[0] is None
    if input_shape is not None:
        given = tuple(int(v) for v in input_shape)
        if len(given) == 3:
            given = (dims[0] or 1, *given)
        if len(given) != 4 or any(v <= 0 for v in given):
            raise MBSError(f"--input-shape {input_shape} is not a 4-D (or 3-D without batch) positive shape — "
                           "e.g. --input-shape 1,3,224,224")
        for axis, (old, new) in enumerate(zip(dims, given)):
            if old is not None and axis > 0 and old != new:
                raise MBSError(f"--input-shape {given} contradicts the model's fixed input {tuple(dims)} "
                               f"at axis {axis} — give the model's own size there")
        return given, batch_dynamic
    if any(d is None for d in dims[1:]):
        shown = tuple("?" if d is None else d for d in dims)
        raise MBSError(f"input '{gin.name}' has dynamic size {shown}; give the size to analyse with "
                       f"--input-shape, e.g. --input-shape {_example_shape(dims, layout)} (with --data the "
                       "size of the data is used)")
    return (1 if dims[0] is None else dims[0], *dims[1:]), batch_dynamic


def _set_input_dims(model: onnx.ModelProto, name: str, dims: Shape) -> None:
    for gin in model.graph.input:
        if gin.name == name:
            for dim, value in zip(gin.type.tensor_type.shape.dim, dims):
                dim.ClearField("dim_param")
                dim.dim_value = value
    del model.graph.value_info[:]


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                consts[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int"):
                consts[node.output[0]] = np.array(onnx.helper.get_attribute_value(attr))
            elif attr.name in ("value_floats", "value_ints"):
                consts[node.output[0]] = np.array(onnx.helper.get_attribute_value(attr))
        elif node.op_type == "Identity" and node.input and node.input[0] in consts:
            # the TorchScript exporter shares equal weights (e.g. BN-folded biases) through Identity nodes;
            # each forwarded copy is a parameter of its own, as in the framework
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _value_shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _infer_shapes(model: onnx.ModelProto, input_name: str, dims: Shape) -> dict[str, Shape]:
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        logger.info("onnx shape inference failed (%s); using onnxruntime for shapes", exc)
        inferred = model
    shapes = _value_shapes(inferred.graph)
    needed = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if needed:
        shapes.update(_runtime_shapes(model, input_name, dims, needed))
    return shapes


def _runtime_shapes(model: onnx.ModelProto, input_name: str, dims: Shape, names: list[str]) -> dict[str, Shape]:
    """Shapes that static inference left open, read off one onnxruntime run on zeros."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.warning("%d tensor shapes unknown and onnxruntime is not installed", len(names))
        return {}
    probe = copy.deepcopy(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    elem = model.graph.input[0].type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else np.float32
    try:
        sess = open_session(probe)
        outs = sess.run(names, {input_name: np.zeros(dims, dtype=dtype)})
    except Exception as exc:
        raise MBSError(f"cannot infer tensor shapes: onnx shape inference left {len(names)} open and onnxruntime "
                       f"could not run the model ({str(exc)[:160]}) — check the model runs in onnxruntime") from None
    return {n: tuple(np.shape(v)) for n, v in zip(names, outs)}


def _detect_layout(model: onnx.ModelProto, input_name: str, dims: Shape, consts: dict[str, np.ndarray]) -> str:
    """NHWC when the input reaches the first Conv through a Transpose(0,3,1,2); else by channel count."""
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier, seen = [input_name], set()
    while frontier:
        name = frontier.pop(0)
        for node in consumers.get(name, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "Transpose":
                perm = list(attr(node, "perm", []))
                if perm == [0, 3, 1, 2]:
                    return "NHWC"
            if node.op_type == "Conv":
                cin = consts[node.input[1]].shape[1] * int(attr(node, "group", 1)) if node.input[1] in consts else None
                return "NCHW" if cin in (None, dims[1]) else "NHWC"
            frontier.extend(node.output)
    return "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"

