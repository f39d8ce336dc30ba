"""configuration_from_plan: per-macroblock β → zoo configuration, matched by output resolution."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from onnxmbs.errors import MBSError
from onnxmbs.planning.document import MacroblockRecord, PlanDocument, read_plan
from onnxmbs.zoo import build
from onnxmbs.zoo.configuration import configuration_from_plan, scaled

ROOT = Path(__file__).resolve().parents[1]


def plan(L: int, betas: dict[int, float]) -> PlanDocument:  # noqa: N803
    """A plan whose macroblocks are one per resolution (out_hw) with the given β (the rest from a fixture)."""
    base = read_plan(ROOT / "tests" / "fixtures" / "plan_v1_resnet20.json")
    blocks = tuple(MacroblockRecord(index=i, level=i, out_hw=(hw, hw), layers=(), e_total=1.0, e_base=1.0,
                                    redundancy=0.0, beta=beta)
                   for i, (hw, beta) in enumerate(sorted(betas.items(), reverse=True)))
    return replace(base, model=replace(base.model, L=L), macroblocks=blocks)


def test_mobilenet_v1_at_224() -> None:
    betas = {112: 1.0, 56: 1.0, 28: 0.99, 14: 0.9250, 7: 0.8581}
    got = configuration_from_plan("mobilenet_v1", plan(224, betas))
    expected = [math.ceil(b * w) for b, w in zip([1.0, 1.0, 1.0, 0.99, 0.9250, 0.8581], [32, 64, 128, 256, 512, 1024])]
    assert got == expected == [32, 64, 128, 254, 474, 879]


def test_mobilenet_v1_at_192_uses_its_own_resolutions() -> None:
    betas = {96: 0.9, 48: 1.0, 24: 1.0, 12: 0.8613, 6: 0.8057}
    got = configuration_from_plan("mobilenet_v1", plan(192, betas))
    assert got == [math.ceil(0.9 * 32), math.ceil(0.9 * 64), 128, 256, 441, 826]


def test_imagenet_resnet_skips_the_stem_macroblock() -> None:
    betas = {112: 0.7, 56: 1.0, 28: 1.0, 14: 0.68, 7: 0.6582}
    assert configuration_from_plan("resnet101", plan(224, betas)) == [64, 128, 175, 337]


def test_cifar_resnet_and_beta_models() -> None:
    assert configuration_from_plan("resnet56", plan(32, {32: 1.0, 16: 0.9, 8: 0.6})) == [16, 29, 39]
    betas = {112: 1.0, 56: 0.99, 28: 0.95, 14: 0.9447, 7: 0.7978}
    assert configuration_from_plan("mobilenet_v2", plan(224, betas)) == [1.0, 0.99, 0.95, 0.9447, 0.7978]
    assert configuration_from_plan("densenet121", plan(224, betas)) == [0.99, 0.95, 0.9447, 0.7978]


def test_shufflenet_rounds_to_group_constraints() -> None:
    betas = {112: 0.9, 56: 1.0, 28: 1.0, 14: 0.9240, 7: 0.8247}
    got = configuration_from_plan("shufflenet_v1_g3", plan(224, betas))
    def up(x: float, m: int) -> int:
        return -(-math.ceil(x) // m) * m

    assert got == [up(0.9 * 24, 3), 240, up(0.924 * 480, 12), up(0.8247 * 960, 12)] == [24, 240, 444, 792]
    assert scaled(0.9, 24, multiple_of=3) == 24 and scaled(0.9, 24) == 22


def test_shufflenet_configuration_builds() -> None:
    pytest.importorskip("torch")
    from onnxmbs.zoo.torch_resnet import count_params

    widths = configuration_from_plan("shufflenet_v1_g3", plan(224, {112: 0.9, 56: 1.0, 28: 1.0, 14: 0.924, 7: 0.8247}))
    assert count_params(build("shufflenet_v1_g3", widths=widths)) > 0  # a valid ShuffleNet


def test_several_macroblocks_at_one_level_take_the_largest_beta() -> None:
    doc = plan(299, {149: 0.9, 73: 1.0, 35: 1.0, 17: 1.0, 8: 0.8})
    extra = replace(doc.macroblocks[0], out_hw=(147, 147), beta=0.95)
    doc = replace(doc, macroblocks=(doc.macroblocks[0], extra, *doc.macroblocks[1:]))
    assert configuration_from_plan("mobilenet_v1", doc)[:2] == [math.ceil(0.95 * 32), math.ceil(0.95 * 64)]


@pytest.mark.parametrize(("name", "doc", "message"), [
    ("vgg16", plan(224, {112: 1.0}), "unknown zoo model"),
    ("resnet18", {**plan(224, {112: 1.0}).to_json(), "schema": "other/1"}, "schema"),
    ("resnet18", plan(224, {112: 1.0, 56: 1.0}), "no macroblock at 28px, 14px, 7px"),
    ("resnet18", {"schema": "onnxmbs.plan/1", "model": {}}, "plan model.path is missing"),
])
def test_errors(name: str, doc: dict, message: str) -> None:
    with pytest.raises(MBSError, match=message):
        configuration_from_plan(name, doc)


def test_real_plan_of_the_digits_model_gives_the_planned_widths(tmp_path: Path) -> None:
    """End to end: plan the embedded ResNet-20, rebuild it from the configuration, compare conv widths."""
    pytest.importorskip("torch")
    from onnxmbs.graph.analysis import analyze
    from onnxmbs.workflow import plan as pipeline
    from onnxmbs.zoo import export

    data = np.load(ROOT / "models" / "digits_calib.npz")["x"][:64]
    doc = pipeline.plan_model(ROOT / "models" / "resnet20_digits.onnx", data=data, preprocess=None,
                              progress=False).document.to_json()
    widths = configuration_from_plan("resnet20", doc)
    betas = {tuple(mb["out_hw"]): mb["beta"] for mb in doc["macroblocks"]}
    assert widths == [math.ceil(betas[(32, 32)] * 16), math.ceil(betas[(16, 16)] * 32), math.ceil(betas[(8, 8)] * 64)]
    compact = export("resnet20", tmp_path / "compact.onnx", widths=widths, dynamo=False)
    assert [layer.out_channels for layer in analyze(compact).layers] == [
        layer["compact_out_channels"] for layer in doc["layers"]]
