"""The handbook's statistics: mean ± std per variant, paired differences with a 95 % t interval."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from onnxmbs.handbook.record import SCHEMA, Handbook, Paired, Point, Run, Settings, t_quantile

MODEL = Path(__file__).resolve().parents[1] / "models" / "resnet20_digits.onnx"


@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (3, 3.182), (7, 2.365), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_printed_table(df, table):
    assert t_quantile(0.95, df) == pytest.approx(table, abs=5e-4)


def test_paired_difference_interval():
    diffs = [0.01, 0.03, 0.02, 0.04]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) × sd / √4
    got = Paired.of(diffs)
    assert got.mean == pytest.approx(mean)
    assert (got.low, got.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert Paired.of([0.1]) is None


def _book(runs: list[Run]) -> Handbook:
    settings = Settings(model="m.onnx", sha256="0" * 64, source="zoo:resnet20", framework="torch", init="scratch",
                        train={"epochs": 1}, train_data="t", val_data="v", calibration=None, preprocess="raw",
                        images=8, round_to=1, ks=(1.0,), seeds=3, uniform=True, original=False)
    point = Point(k=1.0, rf_boundary=33, beta=(1.0, 0.9), configuration=((16,), (30,)), params=100, flops=1000,
                  alpha=0.9, uniform_params=101, uniform_flops=1001, uniform_step=4)
    return Handbook(schema=SCHEMA, settings=settings, params=200, flops=2000, points=(point,), runs=tuple(runs),
                    seconds=1.0)


def test_rows_pair_mbs_and_uniform_by_seed():
    mbs = [0.90, 0.95, 0.92]
    uni = [0.88, 0.90, 0.93]
    runs = [Run("mbs", 1.0, s, None, 100, a, 1.0, 1) for s, a in enumerate(mbs)]
    runs += [Run("uniform", 1.0, s, 0.9, 101, a, 1.0, 1) for s, a in enumerate(uni[:2])]  # seed 2 unfinished
    row = _book(runs).rows()[0]
    assert (row.mbs.mean, row.mbs.n) == (pytest.approx(statistics.fmean(mbs)), 3)
    assert row.mbs.std == pytest.approx(statistics.stdev(mbs))
    assert row.uniform.n == 2
    assert row.difference.n == 2 and row.difference.mean == pytest.approx(((0.90 - 0.88) + (0.95 - 0.90)) / 2)
    assert row.mbs_params == (100,) and row.uniform_params == (101,)


def test_pooled_difference_pairs_by_seed_within_each_k():
    from dataclasses import replace

    from onnxmbs.reports.handbook import to_markdown

    book = _book([])
    second = replace(book.points[0], k=0.6)
    acc = {("mbs", 1.0): [0.90, 0.95], ("uniform", 1.0): [0.88, 0.96], ("mbs", 0.6): [0.91, 0.93],
           ("uniform", 0.6): [0.85, 0.93]}
    runs = tuple(Run(v, k, s, None, 100, a, 1.0, 1) for (v, k), accs in acc.items() for s, a in enumerate(accs))
    pooled = replace(book, points=(book.points[0], second), runs=runs).pooled()
    diffs = [0.90 - 0.88, 0.95 - 0.96, 0.91 - 0.85, 0.93 - 0.93]
    assert pooled.n == 4 and pooled.mean == pytest.approx(statistics.fmean(diffs))
    half = t_quantile(0.95, 3) * statistics.stdev(diffs) / 2
    assert (pooled.low, pooled.high) == (pytest.approx(pooled.mean - half), pytest.approx(pooled.mean + half))
    assert "over all k" in to_markdown(replace(book, points=(book.points[0], second), runs=runs))
    assert replace(book, runs=runs).pooled() is None  # one k: the row's own interval says it


def test_settings_fingerprint_ignores_what_a_resume_may_change():
    a = _book([]).settings
    b = Settings.from_json({**a.to_json(), "ks": [0.6, 1.0], "seeds": 8, "model": "elsewhere/m.onnx"})
    c = Settings.from_json({**a.to_json(), "init": "inherit"})
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def _written(tmp_path, book: Handbook) -> Path:
    path = tmp_path / "handbook.json"
    path.write_text(json.dumps(book.to_json()))
    return path


def test_report_shows_a_handbook(tmp_path):
    """`onnxmbs report --handbook FILE`: the table, the pooled difference and the Figure 5 chart in every format."""
    from dataclasses import replace

    from click.testing import CliRunner

    from onnxmbs.cli import main

    book = _book([])
    points = (book.points[0], replace(book.points[0], k=0.6, params=80, uniform_params=82))
    mbs, uni = {1.0: [0.90, 0.95], 0.6: [0.91, 0.93]}, {1.0: [0.88, 0.96], 0.6: [0.85, 0.93]}
    runs = tuple(Run(v, k, s, None, 100, a, 1.0, 1) for v, acc in (("mbs", mbs), ("uniform", uni))
                 for k, accs in acc.items() for s, a in enumerate(accs))
    book = replace(book, points=points, runs=runs)
    outs = [tmp_path / f"r.{ext}" for ext in ("html", "md", "json")]
    res = CliRunner().invoke(main, ["report", str(MODEL), "--synthetic", "2", "--handbook",
                                    str(_written(tmp_path, book)), *[a for p in outs for a in ("-o", str(p))]])
    assert res.exit_code == 0, res.output
    page, md = outs[0].read_text(), outs[1].read_text()
    mbs_cell = f"{100 * statistics.fmean(mbs[0.6]):.2f} ± {100 * statistics.stdev(mbs[0.6]):.2f}% (2)"
    pooled = f"{100 * statistics.fmean([0.02, -0.01, 0.06, 0.0]):+.2f}"
    for text in (page, md, res.output):
        assert mbs_cell in text and "over all k" in text and pooled in text
    assert "Accuracy handbook: m.onnx" in page and "<svg" in page[page.index("Accuracy handbook"):]
    assert json.loads(outs[2].read_text())["handbooks"][0]["schema"] == SCHEMA


def test_report_refuses_a_file_that_is_no_handbook(tmp_path):
    from click.testing import CliRunner

    from onnxmbs.cli import main

    other = tmp_path / "plan.json"
    other.write_text(json.dumps({"schema": "onnxmbs.plan/1"}))
    res = CliRunner().invoke(main, ["report", str(MODEL), "--synthetic", "2", "--handbook", str(other),
                                    "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "not an onnxmbs handbook" in res.output and "onnxmbs handbook -o" in res.output
    assert not (tmp_path / "r.html").exists()
