"""The workflow layer: the analyse -> measure -> plan/sweep sequence is written once and every caller runs it;
reports/ only renders; one registry of output writers (suffix -> writer) serves reports, handbooks and blocks."""
from __future__ import annotations

import ast
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from graphs import GraphBuilder, classifier

from onnxmbs.cli import main
from onnxmbs.errors import MBSError
from onnxmbs.workflow import sequence

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "onnxmbs"
NPZ = ROOT / "models" / "digits_calib.npz"
SUFFIXES = ".csv, .htm, .html, .json, .markdown, .md"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """Four 3x3 convs (8, 16 s2, 16, 16 s2 channels) with ReLU: two or more macroblocks, a dynamic batch."""
    g = GraphBuilder(("batch", 3, 16, 16))
    x, c_in = "input", 3
    for c_out, stride in ((8, 1), (16, 2), (16, 1), (16, 2)):
        x, c_in = g.relu(g.conv(x, c_in, c_out, stride=stride)), c_out
    path = tmp_path_factory.mktemp("workflow") / "tiny.onnx"
    path.write_bytes(g.build([classifier(g, x, c_in)]).SerializeToString())
    return path


@pytest.fixture
def calls(monkeypatch):
    """Every call of the one sequence, as (model, request, measure)."""
    seen, real = [], sequence.study

    def spy(model, request=sequence.Request(), *, measure=True):
        seen.append((model, request, measure))
        return real(model, request, measure=measure)

    monkeypatch.setattr(sequence, "study", spy)
    return seen


def _models_of(calls) -> list[str]:
    return [str(m.loaded.path) if isinstance(m, sequence.Analysis) else str(m) for m, _, _ in calls]


# ------------------------------------------------------------ the sequence itself
def test_study_is_the_stages_one_by_one(model):
    """study(...).plan(k) is analyze -> measure_source -> plan_from_statistics, done here by hand."""
    from onnxmbs.graph.analysis import analyze
    from onnxmbs.planning.pipeline import plan_from_statistics
    from onnxmbs.stats.measure import CalibrationOptions, measure_source

    options = CalibrationOptions(synthetic=8, batch_size=4, progress=False)
    done = sequence.study(model, sequence.Request(calibration=options, round_to=2))
    analysis = analyze(model)
    measured = measure_source(analysis, options)
    by_hand = plan_from_statistics(analysis, measured.statistics, k=0.8, round_to=2, source=measured.source)
    got = done.plan(0.8).document.to_json()
    want = by_hand.document.to_json()
    for doc in (got, want):
        doc["settings"].pop("seconds")  # the pass's own time
    assert got == want
    assert done.at(0.8).params_compact == by_hand.plan.summary.params_compact
    assert [p.k for p in done.sweep((0.6, 1.2))] == [0.6, 1.2]


def test_analysed_only_plans_with_p_one(model):
    from onnxmbs.graph.analysis import analyze
    from onnxmbs.planning.pipeline import plan_from_statistics

    done = sequence.study(model, measure=False)
    assert done.measured is None and done.statistics is None
    assert done.plan(1.0).document.to_json() == plan_from_statistics(analyze(model), None, k=1.0).document.to_json()


def test_an_analysis_is_reused_not_redone(model, monkeypatch):
    analysed = sequence.study(model, measure=False)
    monkeypatch.setattr(sequence, "analyze", lambda *a, **k: pytest.fail("analysed twice"))
    request = sequence.Request(calibration=sequence.CalibrationOptions(synthetic=4, progress=False))
    assert sequence.study(analysed.analysis, request).analysis is analysed.analysis


# ------------------------------------------------------------ every caller goes through it
def test_plan_model_and_plan_with_stats_run_the_sequence(model, tmp_path, calls):
    from onnxmbs.workflow.plan import plan_model, plan_with_stats

    result = plan_model(model, synthetic=4, progress=False, k=0.9)
    assert result.document.settings.k == 0.9 and result.statistics.images == 4
    assert run("profile", model, "--synthetic", "4", "--no-progress", "-o", tmp_path / "s.json").exit_code == 0
    calls.clear()
    from_file = plan_with_stats(model, tmp_path / "s.json", k=0.9)
    assert calls[0][1].stats == (tmp_path / "s.json",)
    assert from_file.document.summary == result.document.summary  # the same 4 noise images (seed 0)


@pytest.mark.parametrize("command", ["plan", "profile", "sweep", "report", "check"])
def test_every_command_runs_the_sequence(command, model, tmp_path, calls):
    data = ["--synthetic", "4", "--no-progress"]
    args = {"plan": ["plan", model, *data],
            "profile": ["profile", model, *data, "-o", tmp_path / "s.json"],
            "sweep": ["sweep", model, *data, "--k", "0.5,1"],
            "report": ["report", model, *data, "-o", tmp_path / "r.json"],
            "check": ["check", model, *data, "--max-redundancy", "1"]}[command]
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert calls and set(_models_of(calls)) == {str(model)}
    assert calls[-1][2] is True  # ... and it is the sequence that measured


def test_the_gate_and_the_report_analyse_once_then_measure(model, tmp_path, calls):
    """A failure is reported at the stage it happened: analysed first, then measured on that analysis."""
    assert run("check", model, "--synthetic", "4", "--no-progress", "--max-redundancy", "1").exit_code == 0
    assert [measure for _, _, measure in calls] == [False, True]
    assert isinstance(calls[1][0], sequence.Analysis)
    assert calls[1][1].ks == (1.0,)  # monitored at the gate's k
    calls.clear()
    assert run("report", model, "--synthetic", "4", "--no-progress", "--k", "0.7", "--sweep", "0.5,1",
               "-o", tmp_path / "r.json").exit_code == 0
    assert [measure for _, _, measure in calls] == [False, True] and calls[1][1].ks == (0.7, 0.5, 1.0)


def test_static_checks_measure_nothing(model, calls):
    assert run("check", model, "--max-params", "1G").exit_code == 0
    assert [measure for _, _, measure in calls] == [False]


@dataclass(frozen=True)
class _Recipe:
    epochs: int = 1
    seed: int = 0


def test_the_handbook_runs_the_sequence(model, tmp_path, calls):
    from onnxmbs.handbook.engine import HandbookJob, prepare
    from onnxmbs.handbook.store import RunStore
    from onnxmbs.stats.measure import CalibrationOptions

    trainer = SimpleNamespace(config=_Recipe(), init="scratch", metric=None,
                              source=SimpleNamespace(name="zoo:x", framework="torch"))
    job = HandbookJob(onnx=str(model), trainer=trainer, calibration=CalibrationOptions(synthetic=4, progress=False),
                      ks=(0.5, 1.0), original=False)
    store = RunStore(tmp_path / "runs")
    store.root.mkdir()
    prepared = prepare(job, store)
    assert _models_of(calls) == [str(model)] and store.stats_path.is_file()
    done = sequence.study(model, sequence.Request(calibration=job.calibration))
    assert [p.params for p in prepared.points] == [done.at(k).params_compact for k in job.ks]
    assert [t.k for t in prepared.tasks] == [0.5, 1.0]


# ------------------------------------------------------------ reports/ only renders
MEASURING = ("onnxmbs.stats.measure", "onnxmbs.stats.counting", "onnxmbs.stats.sharding", "onnxmbs.runtime.session",
             "onnxmbs.runtime.cluster", "onnxmbs.workflow.sequence", "onnxruntime")
RECORDS_ONLY = ("onnxmbs.workflow", "onnxmbs.graph")  # types to render, never a function that analyses or measures


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            out += [(a.name, ()) for a in node.names]
    return out


@pytest.mark.parametrize("path", sorted((PACKAGE / "reports").glob("*.py")), ids=lambda p: p.name)
def test_reports_import_nothing_that_measures(path):
    import importlib

    for module, names in _imports(path):
        assert not module.startswith(MEASURING), f"{path.name} imports {module}"
        if module.startswith(RECORDS_ONLY):
            imported = importlib.import_module(module)
            assert all(isinstance(getattr(imported, n), type) for n in names), (path.name, names)


def test_only_the_workflow_measures():
    """Outside stats/ and workflow/, nothing calls the statistics pass or loads saved counts for a plan."""
    calls = ("measure_or_load(", "measure_source(", "load_stats(", "monitor_for(", "make_sweeper(")
    found = [f"{p.relative_to(PACKAGE)}: {c}" for p in PACKAGE.rglob("*.py")
             if p.parent.name not in ("stats", "workflow") and p.name not in ("sweep.py", "convergence.py")
             for c in calls if c in p.read_text()]
    assert found == []


# ------------------------------------------------------------ one registry of output writers
def test_one_table_of_suffixes():
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    for literal in ('".html"', '".htm"', '".md"', '".markdown"', '".csv"'):
        assert [p.name for p, text in sources.items() if literal in text] == ["formats.py"], literal
    from onnxmbs.reports.formats import FORMATS, KINDS, writers

    assert ", ".join(sorted(FORMATS)) == SUFFIXES
    assert all(set(writers(kind)) == set(FORMATS.values()) for kind in KINDS)


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), cmd


def test_every_command_writing_a_report_uses_the_registry():
    from onnxmbs.cli.values import OutputFile

    suffixed = {name: p for name, cmd in _commands(main) for p in cmd.params
                if "format follows the suffix" in (getattr(p, "help", "") or "")}
    assert set(suffixed) == {"report", "handbook"}
    assert all(isinstance(p.type, OutputFile) for p in suffixed.values())
    assert {p.type.kind for p in suffixed.values()} == {"report", "handbook"}


def test_report_files_are_written_through_the_registry(model, tmp_path, monkeypatch):
    from onnxmbs.reports import formats

    written, real = [], formats.write_output
    monkeypatch.setattr(formats, "write_output", lambda kind, doc, path: written.append((kind, Path(path)))
                        or real(kind, doc, path))
    outs = [tmp_path / "r.json", tmp_path / "r.MD"]
    assert run("report", model, "--synthetic", "4", "--no-progress", *[a for o in outs for a in ("-o", o)]).exit_code == 0
    assert written == [("report", o) for o in outs]
    assert json.loads(outs[0].read_text())["schema"] == "onnxmbs.report/1"
    assert outs[1].read_text().startswith("# onnxmbs report")


@pytest.mark.parametrize("command", ["report", "handbook"])
def test_an_unknown_suffix_is_a_bad_option_value(command, model, tmp_path):
    out = tmp_path / "x.txt"
    args = {"report": ["report", "-o", out, model, "--synthetic", "4"],
            "handbook": ["handbook", "-o", out, model, "--zoo", "resnet20", "--data", NPZ, "--train", NPZ,
                         "--val", NPZ]}[command]
    res = run(*args)
    assert res.exit_code == 2
    line = f"cannot tell the {command} format of {str(out)!r} — end it in {SUFFIXES}"
    assert line in res.output and "Traceback" not in res.output and not out.exists()


def test_an_unknown_suffix_through_the_api_is_one_mbserror(tmp_path):
    from onnxmbs.reports.formats import write_output

    with pytest.raises(MBSError, match=r"^cannot tell the blocks format of '.*x\.pdf' — end it in \.csv, "):
        write_output("blocks", None, tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()


def _blocks_plan(model: Path):
    """Two blocks, the second removed in round 1 (accuracy 0.9 -> 0.85)."""
    from onnxmbs.blocks.document import SCHEMA, BlockRecord, BlocksPlan, BlocksSettings, RoundRecord, Summary
    from onnxmbs.graph.analysis import analyze

    blocks = tuple(BlockRecord(id=f"b{i}", join=f"add_{i}", nodes=(f"conv_{i}",), params=p, macs=10 * p, removable=True,
                               reason="") for i, p in enumerate((100, 50)))
    return BlocksPlan(schema=SCHEMA, model=analyze(model).loaded.record(), baseline_accuracy=0.9, blocks=blocks,
                      rounds=(RoundRecord(round=1, scores={"b0": 0.7, "b1": 0.85}, removed="b1", accuracy=0.85),),
                      removed=("b1",), summary=Summary(params=1000, params_after=950, macs=10000, macs_after=9500,
                                                       accuracy_after=0.85), settings=BlocksSettings(
                          rescore="every", remove=1, max_accuracy_drop=None, target_param_reduction=None,
                          target_flop_reduction=None, images=10, data=None, provider="CPUExecutionProvider"))


def test_blocks_plans_have_every_format(model, tmp_path):
    from onnxmbs.reports.formats import write_output

    plan = _blocks_plan(model)
    assert json.loads(write_output("blocks", plan, tmp_path / "b.json").read_text()) == plan.to_json()
    rows = list(csv.reader(io.StringIO(write_output("blocks", plan, tmp_path / "b.csv").read_text())))
    assert rows[0][:2] == ["round", "block"] and rows[1][:2] == ["1", "b1"] and len(rows) == 2
    assert "b1" in write_output("blocks", plan, tmp_path / "b.md").read_text()
    page = write_output("blocks", plan, tmp_path / "b.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "Block pruning" in page and page.endswith("</html>\n")
