"""k-sweeps on the embedded model: monotone steps at RF/L, and solving for the largest k meeting a target."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxmbs.graph.analysis import analyze
from onnxmbs.cli import main
from onnxmbs.errors import MBSError
from onnxmbs.stats.measure import CalibrationOptions, measure
from onnxmbs.planning.sweep import Target, curve, make_sweeper, parse_ks, solve, sweep

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
NPZ = ROOT / "models" / "digits_calib.npz"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def sweeper():
    analysis = analyze(MODEL)
    stats, _ = measure(analysis, CalibrationOptions(data=str(NPZ), max_images=96))
    return make_sweeper(analysis, stats)


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "stats.json"
    assert run("profile", MODEL, "--data", NPZ, "--max-images", "96", "-o", out).exit_code == 0
    return out


def test_parse_ks():
    assert parse_ks("0.6:1.4:0.2") == (0.6, 0.8, 1.0, 1.2, 1.4)
    assert parse_ks("0.5,1,2") == (0.5, 1.0, 2.0)
    assert parse_ks("1:1:0.1") == (1.0,)
    for bad in ("1:0.5:0.1", "0:1:0", "a,b", "-1,2", "0.001:100:0.001"):
        with pytest.raises(MBSError, match="—"):
            parse_ks(bad)


def test_reductions_are_non_increasing_step_functions_of_k(sweeper):
    points = sweep(sweeper, [round(0.02 * i, 2) for i in range(1, 176)])  # k = 0.02 .. 3.5
    for a, b in zip(points, points[1:]):
        assert b.param_reduction <= a.param_reduction + 1e-12
        assert b.flop_reduction <= a.flop_reduction + 1e-12
        assert b.params_compact >= a.params_compact and b.flops_compact >= a.flops_compact
        assert all(y >= x - 1e-12 for x, y in zip(a.beta, b.beta))
        if a.rf_boundary == b.rf_boundary:  # same step: the same plan
            assert a.configuration == b.configuration and a.params_compact == b.params_compact
    assert points[0].param_reduction > 0.5 and points[-1].param_reduction == 0.0
    assert all(0.5 < beta <= 1 for p in points for beta in p.beta)
    assert points[-1].configuration == points[-1].widths == ((16,), (32,), (64,))


def test_plan_changes_only_at_rf_over_l(sweeper):
    L = sweeper.analysis.L  # noqa: N806
    assert sweeper.breakpoints() == tuple(rf / L for rf in sweeper.boundaries())
    steps = curve(sweeper, 0.5, 2.0)
    assert [p.k for p in steps][0] == 0.5 and steps[-1].k == 2.0
    for a, b in zip(steps, steps[1:-1]):  # constant on [k_i, k_i+1)
        mid = sweeper.at((a.k + b.k) / 2)
        assert mid.rf_boundary == a.rf_boundary and mid.params_compact == a.params_compact


@pytest.mark.parametrize("target", [Target("param_reduction", 0.3), Target("param_reduction", 0.45),
                                    Target("flop_reduction", 0.1), Target("params", 200_000),
                                    Target("flops", 30e6)])
def test_solve_finds_the_largest_k_meeting_the_target(sweeper, target):
    solution = solve(sweeper, target)
    assert target.meets(solution.point)
    assert solution.k_low <= solution.k < solution.k_high
    assert sweeper.at(solution.k) == solution.point
    assert not target.meets(sweeper.at(solution.k_high))  # the next step misses it: k is the largest
    fine = [k for k in np.arange(0.02, 3.0, 0.01) if target.meets(sweeper.at(float(k)))]
    assert max(fine) < solution.k_high and max(fine) >= solution.k_low


def test_solve_edge_targets(sweeper):
    everything = solve(sweeper, Target("param_reduction", 0.0))
    assert math.isinf(everything.k_high) and everything.point.param_reduction == 0.0
    with pytest.raises(MBSError, match="cannot be reached.*relax the target"):
        solve(sweeper, Target("param_reduction", 0.95))
    with pytest.raises(MBSError, match="fraction"):
        Target("param_reduction", 30)


def test_sweep_cli_table_and_json(stats_file):
    res = run("sweep", MODEL, "--stats", stats_file, "--k", "0.6:1.4:0.2")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "16 | 32 | 64" in lines[0] and len(lines) == 3 + 5
    assert "beta per macroblock" in lines[1] and "configuration" in lines[1]
    doc = json.loads(run("sweep", MODEL, "--stats", stats_file, "--k", "0.5,1,2", "--json").output)
    assert [p["k"] for p in doc["sweep"]] == [0.5, 1.0, 2.0]
    assert {"beta", "configuration", "params_compact", "param_reduction", "flop_reduction"} <= set(doc["sweep"][0])


def test_sweep_cli_solves_and_writes_the_plan(stats_file, tmp_path):
    out = tmp_path / "plan.json"
    res = run("sweep", MODEL, "--stats", stats_file, "--target-param-reduction", "0.3", "-o", out)
    assert res.exit_code == 0, res.output
    assert "largest k =" in res.output and "achieved param reduction" in res.output
    plan = json.loads(out.read_text())
    assert plan["schema"] == "onnxmbs.plan/1" and plan["summary"]["param_reduction"] >= 0.3
    doc = json.loads(run("sweep", MODEL, "--stats", stats_file, "--target-params", "150k", "--json").output)
    assert doc["solution"]["params_compact"] <= 150_000 and doc["solution"]["achieved"] <= 150_000


def test_sweep_cli_errors(stats_file, tmp_path):
    assert run("sweep", MODEL, "--stats", stats_file, "-o", tmp_path / "p.json").exit_code == 2
    assert run("sweep", MODEL, "--stats", stats_file, "--target-params", "1k", "--target-flops", "1M").exit_code == 2
    assert run("sweep", MODEL, "--stats", stats_file, "--target-params", "ten").exit_code == 2
    assert run("sweep", MODEL).exit_code == 2
    res = run("sweep", MODEL, "--stats", stats_file, "--target-params", "1k")
    assert res.exit_code == 1 and "cannot be reached" in res.output and res.output.count("\n") == 1


def test_sweep_cli_takes_a_macroblock_map(stats_file, tmp_path):
    plan = json.loads(run("analyze", MODEL, "--json").output)
    merged = {name: 1 for name in plan["macroblocks"][2]["layers"]}  # fold the 8x8 block into the 16x16 one
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(merged))
    plain = json.loads(run("sweep", MODEL, "--stats", stats_file, "--k", "1", "--json").output)
    res = run("sweep", MODEL, "--stats", stats_file, "--k", "1", "--json", "--macroblocks", mapping)
    assert res.exit_code == 0, res.output
    regrouped = json.loads(res.stdout)
    assert len(plain["sweep"][0]["beta"]) == 3 and len(regrouped["sweep"][0]["beta"]) == 2
    out = tmp_path / "plan.json"
    assert run("sweep", MODEL, "--stats", stats_file, "--target-param-reduction", "0.2", "-o", out,
               "--macroblocks", mapping).exit_code == 0
    assert len(json.loads(out.read_text())["macroblocks"]) == 2
