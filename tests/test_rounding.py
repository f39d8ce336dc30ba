"""--round-to auto: the measured fastest rounding wins (a fake timer: no timing in tests); ties go to
the fewer parameters; the plan keeps an integer round_to and the table."""
from __future__ import annotations

import onnx

from graphs import GraphBuilder, classifier
from onnxmbs.compact.rounding import ROUNDINGS, TIE, RoundingRow, choose_rounding, pick
from onnxmbs.graph.analysis import analyze
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.workflow.sequence import Request, study


def net(tmp_path):
    g = GraphBuilder(("N", 3, 16, 16))
    y = g.relu(g.conv(g.input.name, 3, 24, name="c1"))
    y = g.relu(g.conv(y, 24, 40, stride=2, name="c2"))
    y = g.relu(g.conv(y, 40, 56, stride=2, name="c3"))
    path = tmp_path / "m.onnx"
    onnx.save(g.build([classifier(g, y, 56)]), str(path))
    return analyze(path, input_shape=(1, 3, 16, 16))


def fake_timer():
    """Latencies by position: the last model timed is the fastest; records how many models it saw."""
    calls = []

    def timer(models):
        calls.append(len(models))
        n = len(models) - 1
        return [10.0, *(float(n - i) for i in range(n))]  # the original first, then one per distinct model

    return timer, calls


def test_pick_is_the_measured_minimum_and_ties_go_to_fewer_params():
    rows = [RoundingRow(1, 900, 0, 5.0), RoundingRow(8, 1000, 0, 4.0), RoundingRow(16, 1200, 0, 4.0 * (1 + TIE / 2))]
    assert pick(rows).round_to == 8  # 16 ties with 8 but has more parameters
    rows[0] = RoundingRow(1, 900, 0, 4.0 * (1 + TIE / 2))
    assert pick(rows).round_to == 1  # now 1 ties too, with the fewest parameters
    assert pick([RoundingRow(2, 10, 0, 3.0), RoundingRow(4, 5, 0, 9.0)]).round_to == 2


def test_auto_plans_at_the_fastest_rounding_of_the_fake_timer(tmp_path):
    analysis = net(tmp_path)
    timer, calls = fake_timer()
    choice = choose_rounding(analysis, None, k=0.2, timer=timer)
    plans = {r: plan_from_statistics(analysis, None, k=0.2, round_to=r).document for r in ROUNDINGS}
    distinct = {tuple((g.id, g.compact_channels) for g in p.groups) for p in plans.values()}
    assert len(distinct) > 1  # the roundings really give different models here
    assert calls == [1 + len(distinct)]  # roundings with the same widths are built and timed once
    for row in choice.rows:  # each row is the compact model of the plan at that rounding
        assert row.params == plans[row.round_to].summary.params_compact
    fastest = min(r.latency_ms for r in choice.rows)
    best = [r for r in choice.rows if r.latency_ms == fastest]
    assert choice.chosen == min(best, key=lambda r: (r.params, r.round_to)).round_to
    done = study(analysis, Request(round_to="auto"), measure=False, timer=fake_timer()[0])
    doc = done.plan(0.2).document.to_json()
    assert doc["settings"]["round_to"] == choice.chosen and isinstance(doc["settings"]["round_to"], int)
    assert doc["settings"]["k"] == 0.2
    assert [c["round_to"] for c in doc["rounding"]["candidates"]] == list(ROUNDINGS)
    widths = {g["compact_channels"] for g in doc["groups"] if g["compact_channels"] < g["channels"]}
    assert widths and all(w % choice.chosen == 0 for w in widths)


def test_sweep_points_carry_the_rounding_chosen_at_their_k(tmp_path):
    analysis = net(tmp_path)
    timer, calls = fake_timer()
    done = study(analysis, Request(round_to="auto"), measure=False, timer=timer)
    ks = (0.2, 0.6)
    points = done.sweep(ks)
    for k, point in zip(ks, points):
        chosen = choose_rounding(analysis, None, k=k, timer=fake_timer()[0]).chosen
        assert point.round_to == chosen
        explicit = study(analysis, Request(round_to=chosen), measure=False).at(k)
        assert point.configuration == explicit.configuration and point.params_compact == explicit.params_compact
    assert len(calls) == len(ks)  # one timing per k
    done.plan(0.2), done.at(0.6)
    assert len(calls) == len(ks)  # asked again: the same choice, not timed again
    assert study(analysis, Request(round_to=8), measure=False).at(0.2).round_to == 8


def test_every_command_with_round_to_accepts_auto():
    import click

    from onnxmbs.cli import main
    from onnxmbs.cli.values import RoundTo

    def commands(group):
        for cmd in group.commands.values():
            yield from commands(cmd) if isinstance(cmd, click.Group) else (cmd,)

    with_round_to = {cmd.name: opt for cmd in commands(main) for opt in cmd.params if "--round-to" in opt.opts}
    assert {"plan", "sweep", "report", "check", "handbook"} <= set(with_round_to)
    for name, opt in with_round_to.items():
        assert isinstance(opt.type, RoundTo), name
        assert opt.type.convert("auto", opt, None) == "auto" and opt.type.convert("8", opt, None) == 8


def test_sweep_report_and_check_run_with_round_to_auto(tmp_path):
    """The real onnxruntime timing on a tiny model: every command plans through the one choice."""
    import json

    from click.testing import CliRunner

    from onnxmbs.cli import main

    path = tmp_path / "m.onnx"
    net(tmp_path)

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    res = run("sweep", path, "--synthetic", 8, "--k", "0.2,1.0", "--round-to", "auto", "--json")
    assert res.exit_code == 0, res.output
    points = json.loads(res.stdout)["sweep"]
    assert [p["k"] for p in points] == [0.2, 1.0] and all(p["round_to"] in ROUNDINGS for p in points)
    out = tmp_path / "r.json"
    res = run("report", path, "--synthetic", 8, "--k", 0.2, "--sweep", "0.2,1.0", "--round-to", "auto", "-o", out)
    assert res.exit_code == 0, res.output
    model = json.loads(out.read_text())["models"][0]
    table = model["plan"]["rounding"]
    assert model["plan"]["settings"]["round_to"] == table["chosen"] in ROUNDINGS
    assert [c["round_to"] for c in table["candidates"]] == list(ROUNDINGS)
    res = run("check", path, "--synthetic", 8, "--max-redundancy", 1, "--round-to", "auto")
    assert res.exit_code == 0, res.output
    assert run("plan", path, "--synthetic", 8, "--round-to", "fast").exit_code == 2
