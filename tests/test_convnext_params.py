"""ConvNeXt-style models: the PyTorch adapter's ``folded_params`` equals the ONNX parameter count.

The issue measured a gap of 21,504 on torchvision's (untrained) ConvNeXt-Tiny. It was two things:
the LayerNorms' scale and bias were not counted in the ONNX file (LayerNormalization had no
parameter inputs), and the dynamo exporter stored equal small initializers once, so the blocks of a
stage shared one layer scale γ (all 1e-6). torchvision is not available here, so the model is built
in plain torch the way torchvision builds it.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from onnxmbs.adapters import folded_params  # noqa: E402
from onnxmbs.graph.analysis import analyze  # noqa: E402
from onnxmbs.zoo.export import export_torch  # noqa: E402

DIMS, DEPTHS, CLASSES = (8, 16), (2, 2), 10


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over C of an NCHW tensor, channels-last inside (torchvision's LayerNorm2d)."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(c, c, 7, padding=3, groups=c), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c),
                                   Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(c, 1, 1) * 1e-6)
        self.stochastic_depth = nn.Identity()  # eval mode

    def forward(self, x):
        return x + self.stochastic_depth(self.layer_scale * self.block(x))


class ConvNeXt(nn.Module):
    def __init__(self, dims=DIMS, depths=DEPTHS, classes=CLASSES):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (c, depth) in enumerate(zip(dims, depths)):
            layers.append(nn.Sequential(*[Block(c) for _ in range(depth)]))
            if i + 1 < len(dims):
                layers.append(nn.Sequential(LayerNorm2d(c, eps=1e-6), nn.Conv2d(c, dims[i + 1], 2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


def layer_norm_params(dims, depths) -> int:
    """Scale + bias of every LayerNorm: stem, one per block, one per downsampling, head."""
    return 2 * (dims[0] + sum(c * d for c, d in zip(dims, depths)) + sum(dims[:-1]) + dims[-1])


def merged_layer_scales(dims, depths) -> int:
    """Layer-scale elements lost when the blocks of a stage share one γ (all blocks but the first)."""
    return sum(c * (d - 1) for c, d in zip(dims, depths))


def expected_params(dims=DIMS, depths=DEPTHS, classes=CLASSES) -> int:
    """From the layer shapes: stem, blocks (dw 7x7 + LayerNorm + 4x MLP + γ), downsampling, head."""
    stem = 3 * dims[0] * 16 + dims[0]
    block = sum(d * (c * 49 + c + c * 4 * c + 4 * c + 4 * c * c + c + c) for c, d in zip(dims, depths))
    down = sum(c * n * 4 + n for c, n in zip(dims, dims[1:]))
    head = dims[-1] * classes + classes
    return stem + block + down + head + layer_norm_params(dims, depths)


def test_the_explanation_adds_up_to_the_reported_gap_on_convnext_tiny():
    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    assert layer_norm_params(dims, depths) == 16_320
    assert merged_layer_scales(dims, depths) == 5_184
    assert layer_norm_params(dims, depths) + merged_layer_scales(dims, depths) == 21_504


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_folded_params_equals_the_onnx_count(tmp_path, dynamo):
    torch.manual_seed(0)
    model = ConvNeXt().eval()  # untrained: equal LayerNorm γ/β and layer scales, which dynamo would merge
    assert sum(p.numel() for p in model.parameters()) == expected_params()
    path = export_torch(model, (3, 32, 32), tmp_path / "convnext.onnx", dynamo=dynamo)
    onnx_params = analyze(path).shapes.params
    assert folded_params(model, torch.zeros(1, 3, 32, 32)) == expected_params()
    assert onnx_params == expected_params()


def test_a_parameter_the_model_really_shares_stays_shared(tmp_path):
    import onnx

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 1)
    with torch.no_grad():
        conv.bias.fill_(0.5)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), conv, nn.ReLU(), conv).eval()  # one conv applied twice
    path = export_torch(model, (3, 8, 8), tmp_path / "tied.onnx", dynamo=True)
    graph = onnx.load(str(path)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 and convs[1].input[1] == convs[2].input[1]
    assert analyze(path).shapes.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("select", ["nonzero", "l1"])
def test_apply_plan_cuts_layernorm_linear_and_layer_scale_as_compact_does(tmp_path, select):
    """The channels-last stream is written by the stem/downsampling convs and each block's second Linear; the
    adapter cuts the Linears, the LayerNorms and the layer scales with it, keeping compact's channels."""
    import json

    import numpy as np

    from onnxmbs import apply_plan
    from onnxmbs.compact.writer import compact_model
    from onnxmbs.runtime.session import open_session
    from onnxmbs.workflow.plan import plan_model

    torch.manual_seed(0)
    model = ConvNeXt().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking: LayerNorm affine values and layer scales that matter
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.rand(m.bias.shape, generator=gen) - 0.1)
            if isinstance(m, Block):
                m.layer_scale.copy_(0.1 + 0.5 * torch.rand(m.layer_scale.shape, generator=gen))
    path = export_torch(model, (3, 32, 32), tmp_path / "convnext.onnx", dynamo=False)
    plan = plan_model(str(path), synthetic=4, preprocess="raw", z=8).document.to_json()
    assert plan["summary"]["params_compact"] < plan["summary"]["params"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    result = compact_model(str(path), plan, select=select)
    small = apply_plan(model, tmp_path / "plan.json", torch.zeros(1, 3, 32, 32), init="inherit", select=select)
    assert folded_params(small, torch.zeros(1, 3, 32, 32)) == result.params_compact
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    sess = open_session(result.model.SerializeToString())
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = small(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
