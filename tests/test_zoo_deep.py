"""Deep zoo ResNets are finite untrained; the export check names a non-finite output instead of comparing NaN."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from onnxmbs.errors import MBSError  # noqa: E402
from onnxmbs.zoo.torch_resnet import cifar_resnet, imagenet_resnet  # noqa: E402
from onnxmbs.zoo.export import export_torch  # noqa: E402


def _peak(model, size):
    torch.manual_seed(0)
    with torch.no_grad():
        return float(model.eval()(torch.rand(1, 3, size, size)).abs().max())


def test_deep_resnets_start_near_the_identity():
    torch.manual_seed(0)
    shallow, deep = _peak(cifar_resnet(20), 32), _peak(cifar_resnet(110), 32)
    assert deep < 100 and shallow < 100  # default init grew 2^(blocks/2): ResNet-110 gave ~3e8
    bottleneck = imagenet_resnet(50).stages[1][0]
    assert float(bottleneck.body[-1].weight.detach().abs().sum()) == 0.0  # ImageNet ResNets too (152 gave ~5e6)
    block = cifar_resnet(20).stages[0][0]
    assert float(block.body[-1].weight.detach().abs().sum()) == 0.0  # the branch's last BN γ
    assert float(block.body[1].weight.detach().abs().sum()) > 0  # the others keep γ = 1


class _Overflow(nn.Module):
    def forward(self, x):
        return x * torch.tensor(float("inf")) - x * torch.tensor(float("inf"))


def test_export_check_names_a_non_finite_output(tmp_path):
    with pytest.raises(MBSError, match="non-finite output") as err:
        export_torch(_Overflow(), (3, 8, 8), tmp_path / "nan.onnx", dynamo=False)
    assert "max |diff|" not in str(err.value)
    assert not (tmp_path / "nan.onnx").exists()


@pytest.mark.slow
def test_resnet1202_exports(tmp_path):
    from onnxmbs.zoo import export
    path = export("resnet1202", tmp_path / "r1202.onnx", dynamo=False)
    assert path.stat().st_size > 10_000_000
