"""ONNX export of every zoo family: onnxruntime agrees with the framework, dynamic batch, atomic writes."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from onnxmbs.errors import MBSError
from onnxmbs.zoo import build, export
from onnxmbs.cli.zoo import zoo
from onnxmbs.zoo.export import export_torch

V1_WIDTHS = [8, 8, 16, 16, 32, 32]


@pytest.fixture(autouse=True, scope="module")
def _no_onednn():
    """oneDNN builds a kernel per new conv shape (seconds on DenseNet's 58 shapes); tiny nets run faster without."""
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = saved


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def conv_weight_shapes(path: Path) -> list[tuple[int, ...]]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    return [inits[n.input[1]] for n in graph.node if n.op_type == "Conv"]


@pytest.fixture(scope="module")
def mobilenet_v1_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The same MobileNetV1 widths exported from PyTorch (dynamo) and from Keras (tf2onnx)."""
    pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")
    out = tmp_path_factory.mktemp("mv1")
    kwargs = {"widths": V1_WIDTHS, "num_classes": 3, "input_size": 32}
    return export("mobilenet_v1", out / "t.onnx", **kwargs), export("mobilenet_v1", out / "k.onnx", framework="keras", **kwargs)


def test_torch_dynamo_export_round_trip(tmp_path: Path) -> None:
    model = build("resnet20", widths=[8, 12, 16], num_classes=4).eval()
    path = export_torch(model, (1, 3, 32, 32), tmp_path / "r20.onnx")
    x = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(path, x), expected, rtol=1e-3, atol=1e-4)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].name == "input"
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, 32, 32]
    assert sorted(os.listdir(tmp_path)) == ["r20.onnx"]  # no temp files left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("dynamo", [False, True])
def test_torch_export_with_external_data_and_dynamic_size(tmp_path: Path, dynamo: bool) -> None:
    """The options tools/model_matrix.py needs: weights in <file>.data, dynamic height and width."""
    model = build("resnet20", widths=[8, 12, 16], num_classes=4).eval()
    path = export_torch(model, (1, 3, 32, 32), tmp_path / "ext.onnx", dynamo=dynamo, external_data=True,
                        dynamic_hw=True)
    assert sorted(os.listdir(tmp_path)) == ["ext.onnx", "ext.onnx.data"]  # nothing staged left behind
    proto = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "no initializer went to the external-data file"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, 3, H, W
    x = np.random.default_rng(2).random((2, 3, 40, 48), dtype=np.float32)  # another size than exported at
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(path, x), expected, rtol=1e-3, atol=1e-4)


class CallCounter(nn.Module):
    """Its output depends on how often it was called, so the traced graph disagrees with eager."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float(self.calls)


def test_mismatch_raises_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(MBSError, match="differs from the framework output"):
        export_torch(CallCounter(), (1, 4, 4), tmp_path / "bad.onnx", dynamo=False)
    assert os.listdir(tmp_path) == []


TORCH_FAMILIES = [
    ("resnet18", {"widths": [8, 8, 16, 16]}),
    ("resnet50", {"widths": [8, 8, 8, 16]}),
    ("mobilenet_v2", {"betas": [0.25, 0.25, 0.25, 0.25, 0.25]}),
    ("shufflenet_v1_g3", {"widths": [12, 24, 48, 96]}),
    ("densenet121", {"betas": [0.25, 0.25, 0.25, 0.25]}),
]


@pytest.mark.parametrize(("name", "config"), TORCH_FAMILIES)
def test_torch_family_round_trip(tmp_path: Path, name: str, config: dict) -> None:
    model = build(name, num_classes=3, **config).eval()
    path = export_torch(model, (3, 32, 32), tmp_path / f"{name}.onnx", dynamo=False)  # fast exporter
    x = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(path, x), expected, rtol=1e-3, atol=1e-4)  # batch 3: dynamic


@pytest.mark.slow
@pytest.mark.parametrize(("name", "config"), TORCH_FAMILIES)
def test_torch_family_dynamo_export(tmp_path: Path, name: str, config: dict) -> None:
    path = export(name, tmp_path / f"{name}.onnx", num_classes=3, input_size=32, **config)
    assert run(path, np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 3)


@pytest.mark.parametrize(("name", "config"), [
    ("resnet20", {"widths": [8, 12, 16]}),
    pytest.param("mobilenet_v2", {"betas": [0.25, 0.25, 0.25, 0.25, 0.25]}, marks=pytest.mark.slow),
])
def test_keras_round_trip(tmp_path: Path, name: str, config: dict) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")
    from onnxmbs.zoo.export import export_keras

    model = build(name, framework="keras", num_classes=3, input_size=32, **config)
    path = export_keras(model, tmp_path / "k.onnx")
    x = np.random.default_rng(3).random((4, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(run(path, x), np.asarray(model(x, training=False)), rtol=1e-3, atol=1e-4)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].name == "input"
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", 32, 32, 3]


def test_torch_and_keras_mobilenet_v1_same_conv_shapes(mobilenet_v1_pair: tuple[Path, Path]) -> None:
    torch_path, keras_path = mobilenet_v1_pair
    shapes = conv_weight_shapes(torch_path)
    assert shapes == conv_weight_shapes(keras_path)  # ONNX Conv weights are OIHW whatever the input layout
    assert len(shapes) == 27 and shapes[0] == (8, 3, 3, 3) and shapes[-1] == (32, 32, 1, 1)
    layouts = [len(onnx.load(str(p)).graph.input[0].type.tensor_type.shape.dim) for p in mobilenet_v1_pair]
    assert layouts == [4, 4]
    assert run(keras_path, np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 3)


def test_torch_and_keras_mobilenet_v1_same_analysis(mobilenet_v1_pair: tuple[Path, Path]) -> None:
    from onnxmbs.graph import analysis

    def summary(path: Path) -> list[tuple]:
        result = analysis.analyze(path)
        macroblock = result.macroblock_of()
        return [(layer.out_hw, layer.in_channels, layer.out_channels, layer.groups, layer.kernel, layer.stride,
                 layer.rf, layer.flops, getattr(layer, "macroblock", macroblock.get(layer.name)))
                for layer in result.layers]

    torch_layers, keras_layers = (summary(p) for p in mobilenet_v1_pair)
    assert torch_layers == keras_layers
    assert [t[0] for t in torch_layers][-1] == (1, 1) and len({t[-1] for t in torch_layers}) == 5


def test_cli_export(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "r18.onnx"
    result = CliRunner().invoke(zoo, ["export", "resnet18", "--widths", "8,8,16,16", "--num-classes", "3",
                                      "--input-size", "32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    assert run(out, np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 3)


def test_outputs_close_scales_its_absolute_tolerance_with_the_output():
    """A logit near zero may move by 1e-4 x the largest logit (float reordering in a deep net), not more."""
    from onnxmbs.runtime.session import ATOL, outputs_close

    expected = np.array([[2000.0, 0.0]], np.float32)
    assert outputs_close(expected + [[0.0, 0.5 * ATOL * 2000]], expected)
    assert not outputs_close(expected + [[0.0, 2 * ATOL * 2000]], expected)
    assert outputs_close(np.array([[0.5, 0.0]]) + [[0.0, 0.5 * ATOL]], [[0.5, 0.0]])
    assert not outputs_close(np.array([[0.5, 0.0]]) + [[0.0, 2 * ATOL]], [[0.5, 0.0]])
    assert not outputs_close(np.zeros((1, 2)), np.zeros((2, 1)))
