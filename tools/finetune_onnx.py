"""Tools-only helpers for tools/prove_reconstruct.py: fine-tune an ONNX CNN in PyTorch, and rebuild a
PyTorch ResNet-20 (with BatchNorm) from an ONNX export whose BatchNorm was folded into the convs.

``OnnxModule`` interprets the small op set of onnxmbs' zoo exports (Conv, Relu, Clip, Add, Mul,
ReduceMean, GlobalAveragePool, Reshape, Flatten, Gemm, MatMul) with the Conv/Gemm/MatMul weights
and biases as trainable parameters, so that every variant (original, inherited, reconstructed, a
peer's pruned model) gets exactly the same fine-tune. Not part of the package.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

TRAINABLE = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class OnnxModule(nn.Module):
    """A fine-tunable PyTorch view of an ONNX CNN (BatchNorm already folded by the exporter)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        self.proto = copy.deepcopy(model)
        graph = self.proto.graph
        self.input = graph.input[0].name
        self.output = graph.output[0].name
        consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        train = {node.input[j] for node in graph.node for j in TRAINABLE.get(node.op_type, ())
                 if j < len(node.input) and node.input[j] in consts}
        self.keys = {name: f"p{i}" for i, name in enumerate(sorted(consts))}
        self.params = nn.ParameterDict({self.keys[n]: nn.Parameter(torch.from_numpy(consts[n].copy()))
                                        for n in sorted(train)})
        self.fixed = {n: torch.from_numpy(np.array(v)) for n, v in consts.items() if n not in train}
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node
                      if n.op_type != "Constant"]

    def value(self, env: dict, name: str):
        if name in env:
            return env[name]
        key = self.keys.get(name)
        return self.params[key] if key in self.params else self.fixed[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input: x}
        for op, ins, outs, at in self.nodes:
            args = [self.value(env, t) if t else None for t in ins]
            env[outs[0]] = _OPS[op](args, at)
        return env[self.output]

    def to_onnx(self) -> onnx.ModelProto:
        """The proto with the current parameter values."""
        model = copy.deepcopy(self.proto)
        for t in model.graph.initializer:
            key = self.keys.get(t.name)
            if key in self.params:
                t.CopyFrom(numpy_helper.from_array(self.params[key].detach().cpu().numpy(), t.name))
        return model


def _conv(a, at):
    pads = at.get("pads", [0, 0, 0, 0])
    x = a[0]
    if pads[0] != pads[2] or pads[1] != pads[3]:
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        pads = [0, 0, 0, 0]
    return F.conv2d(x, a[1], a[2] if len(a) > 2 else None, stride=at.get("strides", [1, 1]),
                    padding=(pads[0], pads[1]), dilation=at.get("dilations", [1, 1]), groups=at.get("group", 1))


def _gemm(a, at):
    w = a[1].t() if at.get("transB", 0) else a[1]
    y = at.get("alpha", 1.0) * (a[0] @ w)
    return y + at.get("beta", 1.0) * a[2] if len(a) > 2 and a[2] is not None else y


def _reshape(a, at):
    shape = [int(v) for v in a[1].tolist()]
    shape = [a[0].shape[i] if v == 0 and not at.get("allowzero", 0) else v for i, v in enumerate(shape)]
    return a[0].reshape(shape)


def _reduce_mean(a, at):
    axes = at.get("axes") or (a[1].tolist() if len(a) > 1 and a[1] is not None else None)
    return a[0].mean(dim=tuple(axes), keepdim=bool(at.get("keepdims", 1)))


def _clip(a, at):
    lo = a[1] if len(a) > 1 and a[1] is not None else at.get("min", None)
    hi = a[2] if len(a) > 2 and a[2] is not None else at.get("max", None)
    return torch.clamp(a[0], None if lo is None else float(lo), None if hi is None else float(hi))


_OPS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": lambda a, at: a[0] @ a[1], "Relu": lambda a, at: F.relu(a[0]),
    "Clip": _clip, "Add": lambda a, at: a[0] + a[1], "Mul": lambda a, at: a[0] * a[1],
    "ReduceMean": _reduce_mean, "GlobalAveragePool": lambda a, at: a[0].mean(dim=(2, 3), keepdim=True),
    "Reshape": _reshape, "Flatten": lambda a, at: a[0].flatten(at.get("axis", 1)),
    "Identity": lambda a, at: a[0],
}


def resnet_from_folded(model: nn.Module, proto: onnx.ModelProto) -> nn.Module:
    """Load an ONNX export's folded conv weights into a zoo ResNet with BatchNorm (BN made an exact identity + bias).

    The dynamo exporter names a folded conv's weight ``<conv>.weight`` and its bias ``<conv>.weight_bias``.
    """
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    modules = list(model.named_modules())
    with torch.no_grad():
        for i, (name, mod) in enumerate(modules):
            if isinstance(mod, nn.Conv2d):
                mod.weight.copy_(inits[f"{name}.weight"])
                bn = next(m for _, m in modules[i + 1:] if isinstance(m, nn.BatchNorm2d))
                bn.weight.fill_(1.0)
                bn.bias.copy_(inits[f"{name}.weight_bias"])
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            elif isinstance(mod, nn.Linear):
                mod.weight.copy_(inits[f"{name}.weight"])
                mod.bias.copy_(inits[f"{name}.bias"])
    return model.eval()
