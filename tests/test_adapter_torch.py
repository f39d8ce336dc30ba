"""The PyTorch adapter: a plan applied to a user's own nn.Module gives the planned compact model.

Parameter convention: the plan counts parameters in the exported ONNX graph, where the
exporter has folded every BatchNorm that directly follows a conv into that conv (its 2·C
scale + shift become C bias values) and left every other BatchNorm as a node (2·C).
``folded_params`` counts a torch module the same way, so ``folded_params(compact) ==
plan.summary.params_compact`` is an exact check. BatchNorm statistics are randomised
before export, as in a trained model: a freshly initialised BatchNorm is an identity that
the exporter may fold away together with zero biases, which would change the count.

Most plans come from the fast TorchScript exporter (``dynamo=False``; node names carry the
module scopes); one test uses the embedded dynamo-exported ResNet-20, matched through its
weight initializer names.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import onnxmbs
from onnxmbs.adapters import apply_plan, folded_params
from onnxmbs.adapters.torch_adapter import layer_map
from onnxmbs.errors import MBSError
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.workflow.plan import plan_model
from onnxmbs.zoo.torch_mobilenet import mobilenet_v1
from onnxmbs.zoo.torch_resnet import resnet20_cifar

ROOT = Path(__file__).resolve().parents[1]
X = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 3) -> None:
        super().__init__()
        hidden = c_in * expand
        self.body = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1), InvertedResidual(8, 12, 2), InvertedResidual(12, 12, 1),
                                    InvertedResidual(12, 16, 2), InvertedResidual(16, 16, 1))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth), nn.ReLU(), nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class TinyDenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers, c = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)], 16
        for block in range(3):
            for _ in range(2):
                layers.append(DenseLayer(c, 8))
                c += 8
            if block < 2:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


class PReLUNet(nn.Module):
    """Plain convs and a per-channel PReLU on the last one: the adapter has no rule to resize it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 16, 3, 2, 1)
        self.c, self.d = nn.Conv2d(16, 16, 3, 1, 1), nn.Conv2d(16, 16, 3, 2, 1)
        self.act = nn.PReLU(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.fc(self.act(self.d(x)).mean((2, 3)))


def _randomise(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.weight.data, .5, 1.5), (m.bias.data, -.2, .2), (m.running_mean, -.1, .1),
                              (m.running_var, .5, 1.5)):
                t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
    return model.eval()


def _export(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (X,), str(path), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}})
    return path


MODELS = {  # name: (builder, k of the reducing plan)
    "resnet20": (lambda: resnet20_cifar(widths=[4, 8, 16]), 0.5),
    "mobilenet_v1": (lambda: mobilenet_v1(widths=[8, 8, 16, 16, 32, 32], num_classes=10), 0.5),
    "mobilenet_v2": (TinyMobileNetV2, 0.5),
    "densenet": (TinyDenseNet, 0.3),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request, tmp_path_factory):
    torch.manual_seed(0)
    build, k = MODELS[request.param]
    model = _randomise(build())
    path = _export(model, tmp_path_factory.mktemp(request.param) / "model.onnx")
    reduced = plan_model(path, synthetic=8, preprocess="raw", k=k).document
    full = plan_from_statistics(onnxmbs.analyze(path), None, k=100.0).document
    return model, reduced, full


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_widths_and_params_follow_the_plan(case):
    model, plan, _ = case
    before = _state(model)
    compact = apply_plan(model, plan, X)
    assert plan.summary.params_compact < plan.summary.params  # the plan does reduce something
    modules = dict(compact.named_modules())
    for layer, name in layer_map(model, plan, X).items():
        spec = plan.layer(layer)
        assert modules[name].out_channels == spec.compact_out_channels, name
    assert folded_params(model, X) == plan.summary.params
    assert folded_params(compact, X) == plan.summary.params_compact
    assert compact(X).shape == (1, 10)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the user's model is untouched


def test_inherit_with_full_widths_reproduces_outputs(case):
    model, _, full = case
    assert all(entry.compact_out_channels == entry.out_channels for entry in full.layers)
    same = apply_plan(model, full, X, init="inherit")
    assert same is not model
    with torch.no_grad():
        assert torch.equal(same(X), model(X))


def test_inherit_keeps_the_same_channels_along_a_residual_chain(tmp_path):
    model = _randomise(resnet20_cifar(widths=[4, 8, 16]))
    plan = plan_model(_export(model, tmp_path / "r.onnx"), synthetic=8, preprocess="raw", k=0.5).document
    compact = apply_plan(model, plan, X, init="inherit")
    old, new = dict(model.named_modules()), dict(compact.named_modules())
    chain = ["stages.2.0.shortcut.1", *(f"stages.2.{i}.body.4" for i in range(3))]  # BNs on one residual stream
    kept = []
    for name in chain:
        gamma, original = new[name].weight.detach(), old[name].weight.detach()
        assert len(gamma) < len(original)
        kept.append([int(torch.nonzero(original == g)[0]) for g in gamma])  # randomised γ identify channels
    assert all(k == kept[0] for k in kept) and kept[0] == sorted(kept[0])
    with torch.no_grad():
        assert torch.isfinite(compact(X)).all()


def test_scratch_reinitialises(case):
    model, plan, _ = case
    compact = apply_plan(model, plan, X, init="scratch")
    bn = [m for m in compact.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.running_var == 1) for b in bn)


def test_dynamo_export_matched_by_initializer_names():
    plan = plan_model(ROOT / "models" / "resnet20_digits.onnx", data=ROOT / "models" / "digits_calib.npz",
                      preprocess="raw", max_images=32).document
    model = resnet20_cifar(num_classes=10)
    mapping = layer_map(model, plan, X)
    weights = {"node_Conv_324": "stages.1.0.shortcut.0", "node_Conv_306": "stem.0"}
    assert {k: mapping[k] for k in weights} == weights
    compact = apply_plan(model, plan, X)
    assert folded_params(compact, X) == plan.summary.params_compact


def test_unsupported_layer_gives_a_clear_error(tmp_path):
    model = _randomise(PReLUNet())
    plan = plan_model(_export(model, tmp_path / "prelu.onnx"), synthetic=4, preprocess="raw", k=0.2).document
    assert any(e.compact_out_channels < e.out_channels for e in plan.layers if e.name.startswith("/d/"))
    with pytest.raises(MBSError, match=r"channels of 'd' \(16 -> \d+\): 'prelu' in module 'act' .* — "):
        apply_plan(model, plan, X)


def test_a_plan_of_another_model_is_refused(case):
    _, plan, _ = case
    with pytest.raises(MBSError, match="plan layer .* has no matching conv|not in the plan"):
        apply_plan(PReLUNet(), plan, X)


def test_bad_arguments():
    with pytest.raises(MBSError, match="init="):
        apply_plan(resnet20_cifar(), {"schema": "onnxmbs.plan/1"}, X, init="warm")
    with pytest.raises(MBSError, match="example_inputs"):
        apply_plan(resnet20_cifar(), {}, None)
    with pytest.raises(MBSError, match="not an onnxmbs plan"):
        apply_plan(resnet20_cifar(), {"schema": "x"}, X)
