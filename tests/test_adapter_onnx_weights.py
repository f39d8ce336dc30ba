"""``apply_plan(..., init="onnx", compact_onnx=...)``: the PyTorch module takes the weights of a compact
ONNX file re-fitted by ``compact --reconstruct`` and computes what that file computes (checked here in
onnxruntime on other inputs than the adapter's example), BatchNorm folded in the file becoming an
identity that carries the bias; wrong use is one MBSError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from onnxmbs.adapters import apply_plan, folded_params  # noqa: E402
from onnxmbs.cli import main  # noqa: E402
from onnxmbs.errors import MBSError  # noqa: E402
from onnxmbs.planning.document import read_plan  # noqa: E402
from onnxmbs.runtime.session import open_session  # noqa: E402
from onnxmbs.zoo.export import export_torch  # noqa: E402
from onnxmbs.zoo.torch_mobilenet import mobilenet_v1  # noqa: E402
from onnxmbs.zoo.torch_resnet import resnet20_cifar  # noqa: E402

X = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def trained_looking(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def onnx_out(path: Path, x: np.ndarray) -> np.ndarray:
    sess = open_session(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module", params=["resnet20", "mobilenet_v1"])
def made(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = trained_looking(resnet20_cifar(num_classes=10) if request.param == "resnet20"
                            else mobilenet_v1(widths=[8, 16, 32, 64, 128, 256], num_classes=10))
    onnx_path = export_torch(model, (3, 32, 32), tmp / "m.onnx", dynamo=False)
    np.save(tmp / "calib.npy", np.random.default_rng(0).random((48, 3, 32, 32), dtype=np.float32))
    run = CliRunner().invoke
    plan, compact = tmp / "plan.json", tmp / "c.onnx"
    common = ["--data", str(tmp / "calib.npy"), "--preprocess", "raw"]
    assert run(main, ["plan", str(onnx_path), *common, "--k", "0.6", "-o", str(plan)]).exit_code == 0
    res = run(main, ["compact", str(onnx_path), "--plan", str(plan), "-o", str(compact), "--reconstruct", *common,
                     "--repeats", "0"])
    assert res.exit_code == 0, res.output
    return model, onnx_path, plan, compact


def test_the_module_computes_what_the_reconstructed_onnx_computes(made):
    model, onnx_path, plan, compact = made
    ours = apply_plan(model, plan, X, init="onnx", compact_onnx=compact, onnx_path=onnx_path)
    x = np.random.default_rng(5).random((4, 3, 32, 32), dtype=np.float32)  # not the adapter's example
    want = onnx_out(compact, x)
    with torch.no_grad():
        got = ours(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
    assert folded_params(ours, X) == read_plan(plan).summary.params_compact
    inherited = apply_plan(model, plan, X, init="inherit", onnx_path=onnx_path)
    with torch.no_grad():
        other = inherited(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(other - want)) > 1e-2 * np.max(np.abs(want))  # the re-fitted weights really differ
    for m in ours.modules():  # BatchNorm: the identity carrying the folded bias, ready to learn again
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.running_mean == 0)
            assert torch.allclose(m.running_var + m.eps, torch.ones_like(m.running_var))


def test_wrong_use_is_one_error(made):
    model, onnx_path, plan, compact = made
    with pytest.raises(MBSError, match="give both"):
        apply_plan(model, plan, X, init="onnx", onnx_path=onnx_path)
    with pytest.raises(MBSError, match="weight shape"):
        apply_plan(model, plan, X, init="onnx", compact_onnx=onnx_path, onnx_path=onnx_path)  # the original
    with pytest.raises(MBSError, match="not found"):
        apply_plan(model, plan, X, init="onnx", compact_onnx=compact.with_name("missing.onnx"), onnx_path=onnx_path)


@pytest.mark.parametrize("select", ["nonzero", "l1"])
def test_inherit_keeps_the_channels_compact_keeps(made, select, tmp_path):
    """One channel-selection rule: with trained-looking BatchNorm (folded into the convs' L1 norms by the
    exporter) and a depthwise conv in the group (MobileNetV1), the adapter keeps what compact keeps."""
    model, onnx_path, plan, _ = made
    out = tmp_path / "c.onnx"
    res = CliRunner().invoke(main, ["compact", str(onnx_path), "--plan", str(plan), "-o", str(out), "--select",
                                    select, "--repeats", "0"])
    assert res.exit_code == 0, res.output
    ours = apply_plan(model, plan, X, init="inherit", onnx_path=onnx_path, select=select)
    x = np.random.default_rng(7).random((4, 3, 32, 32), dtype=np.float32)
    want = onnx_out(out, x)
    with torch.no_grad():
        got = ours(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
