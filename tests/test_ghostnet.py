"""GhostNet: a 16-channel conv meets a Ghost module's concat of 8 + 8 at a residual Add.

The plan splits the stem's channels into the concat's parts (``output_groups`` [g, g]);
``compact`` handled it, and now ``apply_plan`` does too.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import onnxmbs  # noqa: E402
from onnxmbs.adapters import folded_params  # noqa: E402
from onnxmbs.compact.writer import compact_model  # noqa: E402
from onnxmbs.workflow.plan import plan_model  # noqa: E402


def conv_bn(cin, cout, k=1, stride=1, groups=1, relu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))


class GhostModule(nn.Module):
    """timm's GhostModule (ratio 2): a primary 1x1 conv and a cheap depthwise conv, concatenated."""

    def __init__(self, cin, cout, relu=True):
        super().__init__()
        self.out = cout
        self.primary = conv_bn(cin, cout // 2, relu=relu)
        self.cheap = conv_bn(cout // 2, cout // 2, 3, groups=cout // 2, relu=relu)

    def forward(self, x):
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], dim=1)[:, :self.out]


class GhostBottleneck(nn.Module):
    def __init__(self, channels, mid):
        super().__init__()
        self.ghost1, self.ghost2 = GhostModule(channels, mid), GhostModule(mid, channels, relu=False)

    def forward(self, x):
        return self.ghost2(self.ghost1(x)) + x


class TinyGhostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_stem = conv_bn(3, 16, 3)
        self.blocks = nn.Sequential(GhostBottleneck(16, 32), GhostBottleneck(16, 32))
        self.head = conv_bn(16, 32, 3, stride=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.conv_stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def ghost(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyGhostNet().eval()
    path = tmp_path_factory.mktemp("ghost") / "ghost.onnx"
    x = torch.rand(1, 3, 16, 16)
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}})
    doc = plan_model(str(path), synthetic=4, z=2, progress=False).document
    return model, path, doc, x


def test_the_plan_splits_the_stem_into_the_concats_parts(ghost):
    _, _, doc, _ = ghost
    stem = next(l for l in doc.layers if l.out_channels == 16 and l.in_channels == 3)
    assert len(stem.output_groups) == 2 and len(set(stem.output_groups)) == 1  # [g, g]
    assert stem.compact_out_channels < 16  # the case that failed: the split group is narrowed


@pytest.mark.parametrize("init", ["scratch", "inherit"])
def test_apply_plan_handles_what_compact_handles(ghost, init):
    model, path, doc, x = ghost
    compact_onnx = compact_model(str(path), doc)
    compact = onnxmbs.apply_plan(model, doc, x, init=init, onnx_path=path)
    assert compact(x).shape == (1, 10)
    widths = {l.name: l.compact_out_channels for l in doc.layers}
    assert compact.conv_stem[0].out_channels == next(w for n, w in widths.items() if "conv_stem" in n)
    assert compact.blocks[0].ghost2.primary[0].out_channels * 2 == compact.conv_stem[0].out_channels
    assert folded_params(compact, x) == compact_onnx.params_compact == doc.summary.params_compact
    assert model.conv_stem[0].out_channels == 16  # the user's model is untouched


@pytest.mark.slow
def test_keras_adapter_handles_ghost_modules_too(tmp_path):
    from onnxmbs.runtime.frameworks import import_keras
    from onnxmbs.zoo.export import export_keras

    try:
        keras = import_keras(tf2onnx=True)
    except ImportError:
        pytest.skip("needs TensorFlow and tf2onnx")
    L = keras.layers

    def conv_bn(x, filters, k=1, depthwise=False, relu=True):
        x = L.DepthwiseConv2D(k, padding="same", use_bias=False)(x) if depthwise else \
            L.Conv2D(filters, k, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU()(x) if relu else x

    def ghost(x, out, relu=True):
        primary = conv_bn(x, out // 2, relu=relu)
        return L.Concatenate()([primary, conv_bn(primary, out // 2, 3, depthwise=True, relu=relu)])

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    stem = conv_bn(inp, 16, 3)
    x = L.Add()([ghost(ghost(stem, 32), 16, relu=False), stem])
    x = conv_bn(L.Conv2D(32, 3, strides=2, padding="same")(x), 32, relu=True)
    model = keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x)))
    path = export_keras(model, tmp_path / "ghost.onnx")
    doc = plan_model(str(path), synthetic=4, z=2, progress=False).document
    assert any(len(l.output_groups) == 2 and len(set(l.output_groups)) == 1 for l in doc.layers)
    compact = onnxmbs.apply_plan(model, doc, onnx_path=path)
    assert compact.output_shape == model.output_shape
    convs = [l for l in compact.layers if type(l).__name__ == "Conv2D"]
    planned = [l.compact_out_channels for l in doc.layers if l.groups == 1]
    assert [c.filters for c in convs] == planned and convs[0].filters < 16  # the stem was split and narrowed
