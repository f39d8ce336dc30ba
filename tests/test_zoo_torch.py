"""PyTorch zoo: parameter counts, widths reaching the convs, registry, CLI, paper table."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from onnxmbs.errors import MBSError
from onnxmbs.zoo import ZOO, build, list_models
from onnxmbs.cli.zoo import zoo
from onnxmbs.zoo.torch_resnet import count_params
from onnxmbs.zoo.torch_shufflenet import channel_shuffle, shufflenet_v1

ROOT = Path(__file__).resolve().parents[1]


def cifar_resnet_params(depth: int, widths: list[int], classes: int = 10) -> int:
    """Closed form: 3x3 stem, basic blocks (conv+BN twice), 1x1+BN projections on shape change, fc."""
    n = (depth - 2) // 6
    total, c = 3 * 9 * widths[0] + 2 * widths[0], widths[0]
    for s, w in enumerate(widths):
        for i in range(n):
            stride = 2 if s and not i else 1
            total += 9 * c * w + 2 * w + 9 * w * w + 2 * w
            if stride != 1 or c != w:
                total += c * w + 2 * w
            c = w
    return total + c * classes + classes


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(("name", "expected"), [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("resnet101", 44_549_160),
    ("mobilenet_v1", 4_231_976), ("mobilenet_v2", 3_504_872), ("densenet121", 7_978_856),
    ("shufflenet_v1_g3", 1_865_728),
])
def test_imagenet_default_param_counts(name: str, expected: int) -> None:
    assert count_params(build(name)) == expected


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 1202])
def test_cifar_resnet_param_counts(depth: int) -> None:
    model = build(f"resnet{depth}")
    assert count_params(model) == cifar_resnet_params(depth, [16, 32, 64])
    assert len(convs(model)) == 6 * ((depth - 2) // 6) + 1 + 2  # + stem + two projections


def test_cifar_resnet_widths_and_forward() -> None:
    model = build("resnet20", widths=[8, 12, 20], num_classes=4).eval()
    assert count_params(model) == cifar_resnet_params(20, [8, 12, 20], classes=4)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_bottleneck_block_output_is_four_times_inner_width() -> None:
    model = build("resnet50", widths=[8, 16, 24, 40], num_classes=3).eval()
    outs = {c.out_channels for c in convs(model)}
    assert {8, 32, 16, 64, 24, 96, 40, 160} <= outs
    assert model.fc.in_features == 160
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_mobilenet_v1_widths_reach_pointwise_convs() -> None:
    widths = [8, 16, 24, 32, 40, 48]
    model = build("mobilenet_v1", widths=widths, num_classes=3).eval()
    pointwise = [c.out_channels for c in convs(model) if c.kernel_size == (1, 1)]
    assert pointwise == [16, 24, 24, 32, 32, 40, 40, 40, 40, 40, 40, 48, 48]
    assert all(c.groups == c.in_channels == c.out_channels for c in convs(model) if c.kernel_size == (3, 3) and c.groups > 1)
    assert convs(model)[0].out_channels == 8
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)


def test_mobilenet_v2_beta_rule() -> None:
    model = build("mobilenet_v2", betas=[1, 1, 1, 0.5, 0.25], num_classes=3).eval()
    c = convs(model)
    # first 14-px block: expansion runs at 28 px (β=1): 32*6; projection at 14 px: ceil(0.5*64)
    first14 = next(i for i, m in enumerate(c) if m.groups > 1 and m.stride == (2, 2) and m.in_channels == 192)
    assert c[first14 - 1].out_channels == 192 and c[first14 + 1].out_channels == math.ceil(0.5 * 64)
    assert c[-1].out_channels == math.ceil(0.25 * 1280)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    short = build("mobilenet_v2", betas=[1, 0.5, 1, 1])  # 4 values: 56..7 px, 112 px at 1
    assert convs(short)[0].out_channels == 32
    assert count_params(short) == count_params(build("mobilenet_v2", betas=[1, 1, 0.5, 1, 1]))


def test_densenet_beta_rule() -> None:
    model = build("densenet121", betas=[1, 0.5, 1, 1], num_classes=3).eval()
    c = convs(model)
    growth = [m.out_channels for m in c if m.kernel_size == (3, 3)]
    assert growth[:6] == [32] * 6 and growth[6:18] == [16] * 12
    transitions = [m for m in c if m.kernel_size == (1, 1) and m.in_channels > 4 * 32 and m.out_channels not in (128, 64)]
    assert transitions[0].in_channels == 64 + 6 * 32  # block 1 output, transition into block 2
    assert c[1 + 2 * 6].out_channels == math.ceil(0.5 * 128)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_channel_shuffle_permutation() -> None:
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    got = channel_shuffle(x, 3).flatten().tolist()
    assert got == [float(g * 4 + i) for i in range(4) for g in range(3)]


def test_shufflenet_widths_and_bias_option() -> None:
    model = shufflenet_v1(widths=[24, 240, 444, 792], num_classes=3).eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    biased = shufflenet_v1(conv_bias=True)
    assert count_params(biased) - count_params(shufflenet_v1()) == sum(c.out_channels for c in convs(biased))
    with pytest.raises(MBSError, match="multiples of 12"):
        shufflenet_v1(widths=[24, 240, 446, 792])


def test_registry_and_errors() -> None:
    assert set(list_models()) == set(ZOO) >= {"resnet20", "resnet1202", "resnet18", "resnet152", "mobilenet_v1",
                                             "mobilenet_v2", "shufflenet_v1_g3", "densenet121"}
    assert ZOO["mobilenet_v1"].frameworks == ("torch", "keras")
    assert ZOO["resnet50"].default_configuration == [64, 128, 256, 512]
    with pytest.raises(MBSError, match="not β"):
        build("resnet18", betas=[1, 1, 1, 1])
    with pytest.raises(MBSError, match="not widths"):
        build("densenet121", widths=[1, 2, 3, 4])
    with pytest.raises(MBSError, match="4 positive integer widths"):
        build("resnet18", widths=[64, 128, 256])
    with pytest.raises(MBSError, match="β values in"):
        build("mobilenet_v2", betas=[1, 1, 1, 1.5])
    with pytest.raises(MBSError, match="unknown zoo model"):
        build("vgg16")
    with pytest.raises(MBSError, match="no keras build"):
        build("densenet121", framework="keras")
    with pytest.raises(MBSError, match="too small"):
        build("mobilenet_v1", input_size=16)


def test_export_function_survives_importing_the_export_module() -> None:
    import onnxmbs.zoo
    from onnxmbs.zoo.export import export_torch  # noqa: F401
    from onnxmbs.zoo import export

    assert callable(export) and export is onnxmbs.zoo.export and export.__module__ == "onnxmbs.zoo"


def test_cli_list_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(zoo, ["list"])
    assert result.exit_code == 0
    assert all(name in result.output for name in list_models())
    bad = runner.invoke(zoo, ["export", "resnet18", "--betas", "1,1,1,1", "-o", str(tmp_path / "m.onnx")])
    assert bad.exit_code == 1 and "error: resnet18 takes stage widths, not β" in bad.stderr
    assert "Traceback" not in bad.output
    bad = runner.invoke(zoo, ["export", "resnet18", "--widths", "64,x", "-o", str(tmp_path / "m.onnx")])
    assert bad.exit_code == 1 and "comma-separated" in bad.stderr
    assert not (tmp_path / "m.onnx").exists()


def _paper_tables():
    spec = importlib.util.spec_from_file_location("paper_tables", ROOT / "tools" / "paper_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_paper_table_counts() -> None:
    tables = _paper_tables()
    results = {r.row.model: r for r in map(tables.evaluate, tables.ROWS)}
    for model, result in results.items():
        if model != "MobileNetV2 224 MBS (1.2L)":
            assert result.diff_m == 0.0, (model, result.ours_m, result.row.paper_m)
    v2 = results["MobileNetV2 224 MBS (1.2L)"]
    assert v2.ours_m == 2.60 and abs(v2.reduction - v2.row.paper_reduction) < 0.2  # paper: 3.14 M but -25.03 %
    assert "| ResNet-101 MBS (L) | [64, 128, 174, 337] | 21.53 | 21.53 | +0.00 |" in tables.markdown(list(results.values()))
