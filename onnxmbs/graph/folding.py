"""Values that shape computations give before run time: ``Shape`` → ``Gather`` → ``Add``/``Div``/… folded.

The TorchScript exporter writes ``torch.chunk(x, 2, dim=1)`` as two ``Slice`` nodes whose starts and
ends are computed from ``Shape(x)[1]``. The channel count is fixed, so those bounds are known ahead of
run time; :class:`StaticValues` folds such small integer computations over the inferred shapes, the
model's constants and a handful of ops. A value that depends on the batch size of a model with a
dynamic batch is not static: with a dynamic batch every ``Shape`` is evaluated twice, with the batch
as inferred and scaled, and a value that differs is unknown (``None``).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx

from onnxmbs.graph.proto import attr

_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}
_FOLDS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Identity", "Div", "Slice",
                    *_BINARY})
_DEPTH = 32


class StaticValues(Mapping):
    """The model's constants, plus the tensors small integer shape computations give before run time."""

    def __init__(self, graph: onnx.GraphProto, shapes: Mapping[str, tuple[int, ...]],
                 consts: Mapping[str, np.ndarray], *, batch_dynamic: bool = False):
        self.shapes, self.consts, self.batch_dynamic = shapes, consts, batch_dynamic
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.memo: dict[str, np.ndarray | None] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default=None):
        if name in self.consts:
            return self.consts[name]
        if name not in self.memo:
            first, second = self._eval(name, 1, _DEPTH), self._eval(name, 7, _DEPTH) if self.batch_dynamic else None
            same = second is None or (first is not None and np.array_equal(first, second))
            self.memo[name] = first if same else None
        value = self.memo[name]
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return iter(self.consts)

    def __len__(self) -> int:
        return len(self.consts)

    def _eval(self, name: str, batch: int, depth: int) -> np.ndarray | None:
        if name in self.consts:
            return np.asarray(self.consts[name])
        node = self.producer.get(name)
        if node is None or node.op_type not in _FOLDS or depth == 0:
            return None
        if node.op_type == "Shape":
            return self._shape(node, batch)
        ins = [self._eval(t, batch, depth - 1) if t else None for t in node.input]
        if ins[0] is None or ins[0].size > 64:
            return None
        try:
            return _apply(node, ins)
        except (ValueError, IndexError, TypeError, ZeroDivisionError):
            return None

    def _shape(self, node: onnx.NodeProto, batch: int) -> np.ndarray | None:
        shape = self.shapes.get(node.input[0])
        if shape is None:
            return None
        dims = np.array([shape[0] * batch, *shape[1:]] if shape else [], dtype=np.int64)
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return dims[start:end]


def _apply(node: onnx.NodeProto, ins: list[np.ndarray | None]) -> np.ndarray | None:
    op, x = node.op_type, ins[0]
    if op in _BINARY or op == "Div":
        if len(ins) < 2 or ins[1] is None:
            return None
        if op == "Div":
            if np.issubdtype(x.dtype, np.integer):
                return (np.trunc(x / ins[1])).astype(x.dtype)  # ONNX integer division truncates
            return x / ins[1]
        return _BINARY[op](x, ins[1])
    if op in ("Cast", "Identity"):
        return x if op == "Identity" else x.astype(onnx.helper.tensor_dtype_to_np_dtype(attr(node, "to")))
    if op == "Gather":
        return None if ins[1] is None else np.take(x, ins[1], axis=attr(node, "axis", 0))
    if op in ("Unsqueeze", "Squeeze"):
        axes = attr(node, "axes", None)
        axes = axes if axes is not None else (ins[1].tolist() if len(ins) > 1 and ins[1] is not None else None)
        if op == "Unsqueeze":
            return None if axes is None else np.expand_dims(x, tuple(axes))
        return np.squeeze(x, tuple(axes)) if axes is not None else np.squeeze(x)
    if op == "Concat":
        return None if any(v is None for v in ins) else np.concatenate(ins, axis=attr(node, "axis", 0))
    return _slice(node, ins)


def _slice(node: onnx.NodeProto, ins: list[np.ndarray | None]) -> np.ndarray | None:
    x = ins[0]
    if x.ndim != 1 or len(ins) < 3 or ins[1] is None or ins[2] is None:
        return None
    step = int(ins[4][0]) if len(ins) > 4 and ins[4] is not None else 1
    return x[int(ins[1][0]):int(ins[2][0]):step]
