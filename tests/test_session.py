"""The one session opener: its options reach onnxruntime."""
from __future__ import annotations

import onnx
import pytest

pytest.importorskip("onnxruntime")

from onnxmbs.compact.activations import SampledProbe, Segments, Store  # noqa: E402
from onnxmbs.runtime.session import open_session  # noqa: E402


def _relu() -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 2, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 2, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def test_spinning_reaches_the_session_options():
    options = open_session(_relu(), spinning=False).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError):  # by default the entry is not set: onnxruntime's own default (spinning)
        open_session(_relu()).get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_the_reconstruction_sessions_do_not_spin():
    """Their runs alternate with numpy's BLAS threads, which spinning onnxruntime threads would slow."""
    probe = SampledProbe(_relu(), [("y", None)], input_name="x", provider="cpu")
    assert probe.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    segments = Segments(_relu(), input_name="x", provider="CPUExecutionProvider", store=Store())
    segments._model = _relu()
    session, _ = segments._segment({0}, ["y"])
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
