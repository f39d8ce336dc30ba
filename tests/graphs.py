"""Tiny ONNX graphs built in code for the tests (expected values are computed in each test)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Append nodes with deterministic random weights; `build()` returns a checked ModelProto."""

    def __init__(self, shape=(1, 3, 32, 32), *, name="input", seed=0, elem=TensorProto.FLOAT):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.input = helper.make_tensor_value_info(name, elem, list(shape))
        self.count = 0

    def _name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array, prefix="c"):
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, *, name=None, outputs=1, **attrs):
        name = name or self._name(op_type.lower())
        outs = [f"{name}_out{i}" if outputs > 1 else f"{name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs if outputs > 1 else outs[0]

    def conv(self, x, cin, cout, k=3, *, stride=1, dilation=1, group=1, pad=None, bias=True, name=None, kw=None):
        kh, kw = k, kw or k
        w = self.const(self.rng.standard_normal((cout, cin // group, kh, kw)).astype(np.float32) * 0.3, "w")
        inputs = [x, w] + ([self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "b")] if bias else [])
        ph = pad if pad is not None else dilation * (kh - 1) // 2
        pw = pad if pad is not None else dilation * (kw - 1) // 2
        return self.op("Conv", inputs, name=name, strides=[stride, stride], dilations=[dilation, dilation],
                       group=group, pads=[ph, pw, ph, pw], kernel_shape=[kh, kw])

    def relu(self, x, name=None):
        return self.op("Relu", [x], name=name)

    def build(self, outputs, *, opset=17):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", [self.input], outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output] if v.type.tensor_type.HasField("shape")}
        for out in model.graph.output:  # give outputs their inferred types so the checker is happy
            if out.name in known:
                out.CopyFrom(known[out.name])
        onnx.checker.check_model(model)
        return model


def classifier(g: GraphBuilder, x, channels, classes=10):
    pooled = g.op("GlobalAveragePool", [x])
    flat = g.op("Flatten", [pooled], axis=1)
    w = g.const(g.rng.standard_normal((classes, channels)).astype(np.float32) * 0.1, "fc")
    b = g.const(np.zeros(classes, np.float32), "fcb")
    return g.op("Gemm", [flat, w, b], transB=1, name="fc")
