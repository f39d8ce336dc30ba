"""The weights of a compact ONNX file, framework-neutral: what ``init="onnx"`` loads into a PyTorch
(:mod:`onnxmbs.adapters.torch_onnx_weights`) or Keras (:mod:`onnxmbs.adapters.keras_onnx_weights`) model."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxmbs.errors import MBSError

TOLERANCE = 1e-3  # max |framework - onnxruntime| relative to max |onnxruntime|


class CompactWeights:
    """A compact ONNX file's conv and linear weights by node."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.proto = load(path)
        self.values = {t.name: numpy_helper.to_array(t) for t in self.proto.graph.initializer}
        self.nodes = {n.name: n for n in self.proto.graph.node}

    def conv(self, layer: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(weight [O, I/g, kh, kw], bias or None) of the Conv node ``layer``."""
        node = self.nodes.get(layer)
        if node is None or node.op_type != "Conv":
            raise MBSError(f"{self.path} has no Conv node '{layer}' — give the compact ONNX made from this plan")
        weight = initializer(self.values, node, 1, self.path)
        bias = initializer(self.values, node, 2, self.path) if len(node.input) > 2 and node.input[2] else None
        return weight, bias

    def affine_after(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) per channel of the Mul/Add chain with constants right after conv ``layer`` (a
        BatchNorm the exporter wrote as arithmetic): ``y = conv(x) * scale + shift``; its bias is in
        ``shift``, and the conv keeps none."""
        weight, bias = self.conv(layer)
        channels = weight.shape[0]
        scale, shift = np.ones(channels), np.zeros(channels) if bias is None else bias.astype(np.float64)
        readers = {t: n for n in self.proto.graph.node for t in n.input}
        tensor = self.nodes[layer].output[0]
        while (node := readers.get(tensor)) is not None and node.op_type in ("Mul", "Add"):
            const = next((self.values[t] for t in node.input if t in self.values), None)
            if const is None or const.size != channels:
                break
            c = const.reshape(channels).astype(np.float64)
            scale, shift = (scale * c, shift * c) if node.op_type == "Mul" else (scale, shift + c)
            tensor = node.output[0]
        return scale.astype(np.float32), shift.astype(np.float32)

    def linears(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return linear_nodes(self.proto, self.values)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(want))), 1e-12)
    return float(np.max(np.abs(got - want))) / scale if got.shape == want.shape else float("inf")


def run_onnx(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from onnxmbs.runtime.session import open_session

    sess = open_session(proto)
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def load(path: str | Path) -> onnx.ModelProto:
    if not Path(path).is_file():
        raise MBSError(f"compact ONNX file not found: {path} — give the -o file of `onnxmbs compact`")
    return onnx.load(str(path))


def initializer(values: Mapping[str, np.ndarray], node: onnx.NodeProto, index: int, where: str | Path) -> np.ndarray:
    name = node.input[index]
    if name not in values:
        raise MBSError(f"input {index} of '{node.name}' in {where} is not a stored weight — init='onnx' needs the "
                       "compact file as onnxmbs compact writes it")
    return values[name]


def linear_nodes(proto: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight as [out, in], bias) of every Gemm / MatMul(+Add) with a stored weight, in graph order."""
    readers = {t: n for n in proto.graph.node for t in n.input}
    found = []
    for node in proto.graph.node:
        if node.op_type == "Gemm" and node.input[1] in values:
            w = values[node.input[1]]
            trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
            bias = values.get(node.input[2]) if len(node.input) > 2 else None
            found.append((w if trans else w.T, bias))
        elif node.op_type == "MatMul" and node.input[1] in values:
            add = readers.get(node.output[0])
            bias = next((values[t] for t in (add.input if add is not None and add.op_type == "Add" else ())
                         if t in values), None)
            found.append((values[node.input[1]].T, bias))
    return found


