"""Algorithm 1 and the coupling rules on hand-made facts (pure: no onnx)."""
from __future__ import annotations

import math

import pytest

from onnxmbs import MBSError
from onnxmbs.planning.facts import DimSpec, GroupFacts, LayerFacts, ParamSpec
from onnxmbs.planning.planner import compact_width, plan, rf_boundary


def layer(name, mb, rf, flops, p, group):
    return LayerFacts(name=name, macroblock=mb, rf=rf, flops=flops, p_nonzero=p, group=group)


LAYERS = [layer("a", 0, 3, 100, 0.5, 0), layer("b", 0, 5, 100, 0.5, 0), layer("c", 1, 9, 200, 0.4, 1),
          layer("d", 1, 17, 200, 0.5, 1), layer("e", 2, 33, 400, 0.25, 2), layer("f", 2, 49, 400, 0.2, 2),
          layer("cls", None, None, 50, 1.0, 3)]
GROUPS = [GroupFacts(0, 16, ("a", "b"), None), GroupFacts(1, 32, ("c", "d"), None),
          GroupFacts(2, 64, ("e", "f"), None), GroupFacts(3, 10, ("cls",), "reaches graph output")]


def test_boundary_is_first_rf_above_z_and_it_is_still_base():
    assert rf_boundary(LAYERS, 16) == 17
    assert rf_boundary(LAYERS, 49) is None
    p = plan(LAYERS, GROUPS, [], L=16, macroblocks=3, k=1.0)
    assert p.rf_boundary == 17 and p.base["d"] and not p.base["e"]


def test_betas_follow_the_paper():
    p = plan(LAYERS, GROUPS, [], L=16, macroblocks=3, k=1.0)
    e = {l.name: l.p_nonzero * l.flops for l in LAYERS}
    assert p.macroblocks[0].beta == 1.0 and p.macroblocks[1].beta == 1.0
    total = sum(e[n] for n in "abcdef")
    base = sum(e[n] for n in "abcd")
    r = 1 - base / total
    assert p.macroblocks[2].e_total == pytest.approx(total)
    assert p.macroblocks[2].redundancy == pytest.approx(r)
    assert p.macroblocks[2].beta == pytest.approx(1 / (1 + r))
    widths = p.widths()
    assert widths[2] == math.ceil(64 / (1 + r))
    assert widths[3] == 10  # frozen


def test_smaller_k_moves_the_boundary_and_cuts_more():
    wide = plan(LAYERS, GROUPS, [], L=16, macroblocks=3, k=1.0)
    narrow = plan(LAYERS, GROUPS, [], L=16, macroblocks=3, k=0.5)
    assert narrow.rf_boundary == 9 and narrow.macroblocks[1].beta < 1.0
    assert all(n.beta <= w.beta for n, w in zip(narrow.macroblocks, wide.macroblocks))
    assert plan(LAYERS, GROUPS, [], L=16, macroblocks=3, k=4.0).rf_boundary is None


def test_group_spanning_macroblocks_takes_largest_beta():
    groups = [GroupFacts(0, 16, ("a", "e"), None), GroupFacts(1, 32, ("c", "d"), None),
              GroupFacts(2, 64, ("f", "b"), None), GroupFacts(3, 10, ("cls",), None)]
    p = plan(LAYERS, groups, [], L=16, macroblocks=3, k=0.5)
    betas = {g.id: g.beta for g in p.groups}
    assert betas[0] == max(p.macroblocks[0].beta, p.macroblocks[2].beta) == 1.0
    assert betas[3] == 1.0  # only a producer outside every macroblock


def test_compact_width_rounding():
    assert compact_width(512, 0.8847, round_to=1) == math.ceil(0.8847 * 512)
    assert compact_width(512, 0.8847, round_to=8) == 456
    assert compact_width(100, 0.99, round_to=8) == 100  # never above C
    assert compact_width(240, 0.9, multiple_of=3) == 216
    assert compact_width(10, 0.5000000001) == 5  # float noise does not add a channel


def test_param_and_mac_prediction_through_specs():
    specs = [ParamSpec("w1", (DimSpec(32, (1,)), DimSpec(16, (0,)), DimSpec(3), DimSpec(3)), macs_per_element=64),
             ParamSpec("b1", (DimSpec(32, (1,)),)),
             ParamSpec("w2", (DimSpec(64, (2,)), DimSpec(48, (0, 1)), DimSpec(1), DimSpec(1)), macs_per_element=16),
             ParamSpec("bn_mean", (DimSpec(64, (2,)),), is_param=False)]
    p = plan(LAYERS, GROUPS, specs, L=16, macroblocks=3, k=1.0)
    w = p.widths()
    assert p.summary.params == 32 * 16 * 9 + 32 + 64 * 48
    assert p.summary.params_compact == w[1] * w[0] * 9 + w[1] + w[2] * (w[0] + w[1])
    assert p.summary.flops == 32 * 16 * 9 * 64 + 64 * 48 * 16
    assert p.summary.flops_compact == w[1] * w[0] * 9 * 64 + w[2] * (w[0] + w[1]) * 16


def test_bad_settings():
    with pytest.raises(MBSError, match="either"):
        plan(LAYERS, GROUPS, [], L=16, macroblocks=3, k=1.0, z=10)
    with pytest.raises(MBSError, match="positive"):
        plan(LAYERS, GROUPS, [], L=16, macroblocks=3, k=-1.0)
    p = plan(LAYERS, GROUPS, [], L=16, macroblocks=3, z=10.0)
    assert p.k is None and p.z == 10.0 and p.rf_boundary == 17


def test_planner_is_pure():
    """The planner and its records import nothing but the stdlib, numpy and each other."""
    import ast
    import pathlib

    import onnxmbs.planning.planner
    root = pathlib.Path(onnxmbs.planning.planner.__file__).parent
    for name in ("planner.py", "facts.py"):
        tree = ast.parse((root / name).read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in modules if m and m.split(".")[0] in ("onnx", "onnxruntime", "torch")}, modules
        assert {m for m in modules if m and m.startswith("onnxmbs")} <= {"onnxmbs.errors", "onnxmbs.planning.facts"}
