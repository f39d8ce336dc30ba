"""onnxmbs.compact.writer on PyTorch-exported CNNs: zoo families, planted dead channels, zoo configurations.

Models are exported with the TorchScript exporter (``dynamo=False``, dynamic batch, BN folded
into the convs): a second per model where ``onnxmbs.zoo.export.export_torch`` (dynamo) takes
15-30 s; one slow test runs the dynamo export too. BatchNorm statistics are randomised before
export, as in a trained model (default-initialised BNs make the exporter share equal biases).
"""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from onnxmbs.graph.analysis import analyze
from onnxmbs.compact.writer import compact_model
from onnxmbs.workflow.plan import plan_model
from onnxmbs.planning.planner import summarize
from onnxmbs.planning.scaling import param_specs
from onnxmbs.zoo.configuration import InvertedResidualWidths as IRW
from onnxmbs.zoo.configuration import configuration_from_plan
from onnxmbs.zoo.torch_densenet import DenseLayer
from onnxmbs.zoo.torch_mobilenet import InvertedResidual, mobilenet_v1, mobilenet_v2
from onnxmbs.zoo.torch_resnet import resnet20_cifar
from onnxmbs.zoo.torch_shufflenet import ShuffleUnit

INPUT = (1, 3, 32, 32)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) + 0.5
            m.bias.data = torch.randn(n, generator=gen) * 0.1
            m.running_mean.data = torch.randn(n, generator=gen) * 0.1
            m.running_var.data = torch.rand(n, generator=gen) + 0.5
    return model.eval()


def export(model: nn.Module, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(INPUT),), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                          opset_version=17)
    return str(path)


def head(x: torch.Tensor, fc: nn.Module) -> torch.Tensor:
    return fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MiniV2(nn.Module):
    """MobileNetV2-style: ReLU6, expansions, depthwise, linear bottlenecks, residual adds."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(IRW(8, 8, 8, 1, False, True)), InvertedResidual(IRW(8, 24, 12, 2, True, False)),
            InvertedResidual(IRW(12, 36, 12, 1, True, True)), InvertedResidual(IRW(12, 36, 16, 2, True, False)))
        self.last = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return head(self.last(self.blocks(self.stem(x))), self.fc)


class MiniShuffle(nn.Module):
    """ShuffleNetV1-style (g=3): grouped 1x1 convs, channel shuffle, depthwise, Concat and Add units."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.units = nn.Sequential(*(ShuffleUnit(a, b, s, groups=3, first=f, bias=bias) for a, b, s, f, bias in (
            (12, 48, 2, True, False), (48, 48, 1, False, False), (48, 96, 2, False, True), (96, 96, 1, False, True))))
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        return head(self.units(self.stem(x)), self.fc)


class MiniDense(nn.Module):
    """DenseNet-BC-style: BN-ReLU-conv layers concatenated, transitions with average pooling."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, 1, 1, bias=False)]
        for b in range(3):
            layers += [DenseLayer(8, 16, 4), DenseLayer(12, 16, 4)]
            if b < 2:
                layers += [nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2)]
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return head(self.features(x), self.fc)


class SE(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.b(torch.relu(self.a(x.mean((2, 3), keepdim=True)))))


class MiniSE(nn.Module):
    """Squeeze-and-excitation blocks and a Reshape (not Flatten) before the classifier."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), SE(16),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(), SE(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.body(x)
        return self.fc(x.mean((2, 3)).reshape(x.shape[0], 32))


FAMILIES = {
    "resnet": lambda: resnet20_cifar(widths=[8, 16, 32]),
    "mobilenet_v1": lambda: mobilenet_v1(widths=[8, 8, 16, 16, 32, 32], num_classes=10),
    "mobilenet_v2": MiniV2, "shufflenet": MiniShuffle, "densenet": MiniDense, "se": MiniSE,
}


def outputs(path_or_model, x: np.ndarray) -> np.ndarray:
    data = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_compacts_to_the_predicted_count(family, tmp_path):
    path = export(randomize(FAMILIES[family]()), tmp_path / f"{family}.onnx")
    plan = plan_model(path, synthetic=4, preprocess="raw", z=4).document.to_json()
    result = compact_model(path, plan)
    assert result.params_compact == plan["summary"]["params_compact"] < plan["summary"]["params"]
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert outputs(result.model, x).shape == (3, 10)
    identity = compact_model(path, plan_model(path, synthetic=2, preprocess="raw", z=1e6).document.to_json())
    np.testing.assert_array_equal(outputs(identity.model, x), outputs(path, x))


class Plain(nn.Module):
    """Conv-ReLU and depthwise-separable layers without BN, so planted dead channels stay exactly zero."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 16, 3, 2, 1)
        self.dw, self.pw = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return head(torch.relu(self.pw(torch.relu(self.dw(x)))), self.fc)


def test_planted_dead_channels_are_the_ones_removed(tmp_path):
    model = Plain().eval()
    dead = {"c1": [2, 5], "c2": [0, 3, 4, 9, 15]}
    with torch.no_grad():
        for name, channels in dead.items():
            conv = getattr(model, name)
            conv.weight[channels] = 0.0
            conv.bias[channels] = -1.0
    path = export(model, tmp_path / "plain.onnx")
    analysis = analyze(path)
    plan = plan_model(path, synthetic=4, preprocess="raw", z=1e6).document.to_json()
    widths = {g["id"]: g["compact_channels"] for g in plan["groups"]}
    convs = [c.name for c in analysis.layers]
    for index, channels in ((0, dead["c1"]), (1, dead["c2"])):
        gid = analysis.channels.conv_group[convs[index]]
        plan["groups"][gid]["compact_channels"] = widths[gid] = plan["groups"][gid]["channels"] - len(channels)
    plan["summary"]["params_compact"] = summarize(param_specs(analysis), widths).params_compact
    result = compact_model(path, plan)
    for index, channels in ((0, dead["c1"]), (1, dead["c2"])):
        gid = analysis.channels.conv_group[convs[index]]
        assert set(result.kept[gid]).isdisjoint(channels) and len(result.kept[gid]) == widths[gid]
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(outputs(result.model, x), outputs(path, x), rtol=1e-5, atol=1e-5)
    assert result.params_compact == plan["summary"]["params_compact"]


ZOO = {
    "resnet20": lambda cfg=None: resnet20_cifar(widths=cfg),
    "mobilenet_v1": lambda cfg=None: mobilenet_v1(widths=cfg, num_classes=10),
    "mobilenet_v2": lambda cfg=None: mobilenet_v2(betas=cfg, num_classes=10),
}


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1",
                                  pytest.param("mobilenet_v2", marks=pytest.mark.slow)])
def test_compact_zoo_model_equals_zoo_model_at_the_planned_configuration(name, tmp_path):
    path = export(randomize(ZOO[name]()), tmp_path / "full.onnx")
    plan = plan_model(path, synthetic=4, preprocess="raw").document.to_json()
    result = compact_model(path, plan)
    config = configuration_from_plan(name, plan)
    rebuilt = export(randomize(ZOO[name](config)), tmp_path / "configured.onnx")
    assert result.params_compact == plan["summary"]["params_compact"] == analyze(rebuilt).shapes.params
    assert result.params_compact < result.params


@pytest.mark.slow
def test_dynamo_exported_shufflenet(tmp_path):
    from onnxmbs.zoo.export import export_torch

    path = str(export_torch(randomize(MiniShuffle()), INPUT, tmp_path / "shuffle.onnx"))
    plan = plan_model(path, synthetic=4, preprocess="raw", z=6).document.to_json()
    result = compact_model(path, plan)
    assert result.params_compact == plan["summary"]["params_compact"] < plan["summary"]["params"]


def test_weights_shared_through_identity_nodes(tmp_path):
    """Default BatchNorms fold to equal biases, which the TorchScript exporter shares via Identity nodes."""
    path = export(FAMILIES["resnet"]().eval(), tmp_path / "shared.onnx")
    analysis = analyze(path)
    assert any(n.op_type == "Identity" for n in analysis.loaded.graph.node)
    plan = plan_model(path, synthetic=2, preprocess="raw", z=4).document.to_json()
    assert plan["summary"]["params"] == analysis.shapes.params
    result = compact_model(path, plan)
    assert result.params_compact == plan["summary"]["params_compact"] < analysis.shapes.params
    assert not any(n.op_type == "Identity" for n in result.model.graph.node)


class MiniC2f(nn.Module):
    """YOLOv8's C2f in small, without BN: ``chunk`` in two, a residual bottleneck on the second half, Concat."""

    def __init__(self):
        super().__init__()
        self.stem, self.cv1 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 16, 1)
        self.m1, self.m2 = nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.cv2, self.fc = nn.Conv2d(24, 16, 1), nn.Linear(16, 10)

    def forward(self, x):
        a, b = torch.relu(self.cv1(torch.relu(self.stem(x)))).chunk(2, 1)
        r = b + torch.relu(self.m2(torch.relu(self.m1(b))))
        return head(torch.relu(self.cv2(torch.cat([a, b, r], 1))), self.fc)


def test_c2f_chunk_halves_are_cut_exactly(tmp_path):
    """TorchScript writes ``chunk`` as Slices with bounds computed from the shape (dynamic batch): both halves
    are groups of their own, planted dead channels in each are removed, and the output is unchanged."""
    model = MiniC2f().eval()
    with torch.no_grad():  # dead: cv1 2 (first half), 9 and 12 (second half), and m2 1, 4 to match the residual
        for conv, channels in ((model.cv1, [2, 9, 12]), (model.m2, [1, 4])):
            conv.weight[channels] = 0.0
            conv.bias[channels] = -1.0
    path = export(model, tmp_path / "c2f.onnx")
    analysis = analyze(path)
    cv1 = next(c.name for c in analysis.layers if c.out_channels == 16 and c.in_channels == 8)
    first, second = analysis.channels.conv_output_groups[cv1]
    assert not any(g.frozen for g in analysis.channels.groups if g.id in (first, second))
    plan = plan_model(path, synthetic=4, preprocess="raw", z=1e6).document.to_json()
    widths = {g["id"]: g["compact_channels"] for g in plan["groups"]}
    for gid, width in ((first, 7), (second, 6)):
        plan["groups"][gid]["compact_channels"] = widths[gid] = width
    plan["summary"]["params_compact"] = summarize(param_specs(analysis), widths).params_compact
    result = compact_model(path, plan)
    assert result.kept[first] == (0, 1, 3, 4, 5, 6, 7) and result.kept[second] == (0, 2, 3, 5, 6, 7)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(outputs(result.model, x), outputs(path, x), rtol=1e-5, atol=1e-5)
    assert result.params_compact == plan["summary"]["params_compact"]


@pytest.mark.parametrize("select", ["nonzero", "l1"])
def test_c2f_in_the_torch_adapter_keeps_the_channels_compact_keeps(select, tmp_path):
    """apply_plan(init="inherit") on a module with ``chunk``: both halves cut to equal widths, the same channels as
    the compact ONNX (one selection rule), so both compute the same function; unequal halves are refused."""
    import json

    from onnxmbs import apply_plan
    from onnxmbs.errors import MBSError

    model = randomize(MiniC2f())
    path = export(model, tmp_path / "c2f.onnx")
    analysis = analyze(path)
    plan = plan_model(path, synthetic=4, preprocess="raw", z=1e6).document.to_json()
    cv1 = next(c.name for c in analysis.layers if c.out_channels == 16 and c.in_channels == 8)
    first, second = analysis.channels.conv_output_groups[cv1]
    widths = {g["id"]: g["compact_channels"] for g in plan["groups"]}
    for gid in (first, second):
        plan["groups"][gid]["compact_channels"] = widths[gid] = 5
    plan["summary"]["params_compact"] = summarize(param_specs(analysis), widths).params_compact
    for layer in plan["layers"]:  # the plan's per-layer widths follow its groups
        layer["compact_out_channels"] = sum(widths[g] for g in layer["output_groups"])
    (tmp_path / "cut.json").write_text(json.dumps(plan))
    result = compact_model(path, plan, select=select)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    small = apply_plan(model, tmp_path / "cut.json", torch.zeros(INPUT), init="inherit", select=select)
    with torch.no_grad():
        np.testing.assert_allclose(small(torch.from_numpy(x)).numpy(), outputs(result.model, x), rtol=1e-4, atol=1e-5)
    assert small.cv1.out_channels == 10 and small.m1.in_channels == 5 and small.cv2.in_channels == 15
    plan["groups"][second]["compact_channels"] = widths[second] = 6  # torch's chunk would cut 11 into 6 + 5
    for layer in plan["layers"]:
        layer["compact_out_channels"] = sum(widths[g] for g in layer["output_groups"])
    (tmp_path / "unequal.json").write_text(json.dumps(plan))
    with pytest.raises(MBSError, match="'chunk' divides its input into equal parts, but the plan gives them 5/6"):
        apply_plan(model, tmp_path / "unequal.json", torch.zeros(INPUT), init="inherit")


@pytest.mark.parametrize("select", ["nonzero", "l1"])
def test_shufflenet_apply_plan_keeps_what_compact_keeps(select, tmp_path):
    """The adapter follows the channel shuffle (view - transpose - view) and cuts grouped convs by the rule the
    surgery uses (approximations included), so the PyTorch module computes what the compact ONNX computes."""
    import json

    from onnxmbs import apply_plan

    model = randomize(MiniShuffle())
    path = export(model, tmp_path / "shuffle.onnx")
    plan = plan_model(path, synthetic=4, preprocess="raw", z=6, round_to=3).document.to_json()
    assert plan["summary"]["params_compact"] < plan["summary"]["params"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    result = compact_model(path, plan, select=select)
    small = apply_plan(model, tmp_path / "plan.json", torch.zeros(INPUT), init="inherit", select=select)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        got = small(torch.from_numpy(x)).numpy()
    want = outputs(result.model, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
