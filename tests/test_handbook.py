"""The accuracy handbook: plans per k, retraining per seed, uniform scaling at the same budget, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from onnxmbs.cli import main  # noqa: E402
from onnxmbs.handbook.engine import HandbookJob, run_handbook  # noqa: E402
from onnxmbs.handbook.record import Handbook  # noqa: E402
from onnxmbs.handbook.store import RunStore  # noqa: E402
from onnxmbs.handbook.training import ModelSource, Trainer, run_task  # noqa: E402
from onnxmbs.stats.measure import CalibrationOptions  # noqa: E402
from onnxmbs.train import TrainConfig  # noqa: E402
from onnxmbs.data.training import load_dataset  # noqa: E402
from onnxmbs.data.normalisation import PRESETS  # noqa: E402

SIZE = 8
CONFIG = TrainConfig(epochs=1, batch_size=16, flip=False, crop_pad=0)
FLAGS = ["--epochs", "1", "--batch-size", "16", "--no-flip", "--crop-pad", "0", "--preprocess", "raw",
         "--threads", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A random-weight ResNet-20 (3 classes) exported at 8 px, and small random labelled data."""
    from onnxmbs.zoo import build
    from onnxmbs.zoo.export import export_torch

    root = tmp_path_factory.mktemp("handbook")
    torch.manual_seed(0)
    model = build("resnet20", num_classes=3)
    for m in model.modules():  # trained-looking BatchNorm statistics, so the exporter folds every BN
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    export_torch(model.eval(), (3, SIZE, SIZE), root / "model.onnx", dynamo=False)
    rng = np.random.default_rng(0)
    x, y = rng.random((48, 3, SIZE, SIZE), dtype=np.float32), rng.integers(0, 3, 48)
    np.savez(root / "train.npz", x=x, y=y)
    np.savez(root / "val.npz", x=x[:24], y=y[:24])
    np.save(root / "calib.npy", x[:16])
    return {name: root / f for name, f in (("onnx", "model.onnx"), ("train", "train.npz"), ("val", "val.npz"),
                                          ("calib", "calib.npy"))} | {"root": root}


def _job(files: dict[str, Path]) -> HandbookJob:
    data = {s: load_dataset(files[s], layout="NCHW", normalisation=PRESETS["raw"]) for s in ("train", "val")}
    source = ModelSource(framework="torch", chw=(3, SIZE, SIZE), num_classes=3, zoo="resnet20")
    trainer = Trainer(source=source, train=data["train"], val=data["val"], config=CONFIG, threads=1)
    return HandbookJob(onnx=str(files["onnx"]), trainer=trainer, ks=(0.6, 1.4), seeds=1, uniform=True,
                       calibration=CalibrationOptions(data=str(files["calib"]), preprocess="raw"),
                       train_data=str(files["train"]), val_data=str(files["val"]))


def _interrupted_after(n: int):
    def execute(trainer, tasks, progress):
        for i, task in enumerate(tasks):
            if i == n:
                raise KeyboardInterrupt
            yield run_task(trainer, task)
    return execute


def _recording(trained: list[str]):
    def execute(trainer, tasks, progress):
        for task in tasks:
            trained.append(task.key)
            yield run_task(trainer, task)
    return execute


@pytest.fixture(scope="module")
def resumed(files) -> tuple[Handbook, list[str], list[str]]:
    """A handbook stopped after its first run, then run again: (handbook, first keys, keys trained again)."""
    store = RunStore(files["root"] / "runs")
    with pytest.raises(KeyboardInterrupt):
        run_handbook(_job(files), store, execute=_interrupted_after(1))
    first = sorted(store.load())
    trained: list[str] = []
    book = run_handbook(_job(files), store, execute=_recording(trained))
    return book, first, trained


def test_resume_does_not_retrain_finished_runs(resumed):
    book, first, trained = resumed
    assert first == ["mbs_k0.6_s0"]
    assert "mbs_k0.6_s0" not in trained
    assert sorted(trained + first) == sorted(r.key for r in book.runs)
    assert len(book.runs) == 5  # 2 k × (MBS + uniform) + the original, one seed each


def test_trained_params_equal_the_plans_predictions(resumed):
    book = resumed[0]
    by_key = {r.key: r for r in book.runs}
    for p in book.points:
        assert by_key[f"mbs_k{p.k:g}_s0"].params == p.params
        assert by_key[f"uniform_k{p.k:g}_s0"].params == p.uniform_params
    assert by_key["original_s0"].params == book.params
    assert all(0.0 <= r.accuracy <= 1.0 and r.epochs == 1 for r in book.runs)


def test_uniform_budget_within_one_channel_step(resumed):
    book = resumed[0]
    for p in book.points:
        assert p.params < book.params
        assert 0 < p.uniform_step and abs(p.uniform_params - p.params) <= p.uniform_step
        assert 0 < p.alpha < 1


def test_handbook_json_round_trip(resumed):
    book = resumed[0]
    again = Handbook.from_json(json.loads(json.dumps(book.to_json())))
    assert again == book
    assert [r.point.k for r in book.rows()] == [0.6, 1.4]


def test_cli_resumes_and_writes_every_format(files, resumed):
    out = files["root"] / "out"
    outputs = [out / f"hb.{ext}" for ext in ("json", "md", "csv", "html")]
    args = ["handbook", str(files["onnx"]), "--zoo", "resnet20", "--data", str(files["calib"]),
            "--train", str(files["train"]), "--val", str(files["val"]), "--k", "0.6,1.4", "--uniform",
            "--runs", str(files["root"] / "runs"), *FLAGS, *sum((["-o", str(o)] for o in outputs), [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    book = Handbook.from_json(json.loads(outputs[0].read_text()))
    assert {r.key: r.accuracy for r in book.runs} == {r.key: r.accuracy for r in resumed[0].runs}  # nothing re-run
    assert "| 0.6 |" in outputs[1].read_text()
    assert outputs[2].read_text().splitlines()[0].startswith("k,rf_boundary,beta")
    html = outputs[3].read_text()
    assert "<svg" in html and html.count('class="point"') == 5  # 2 MBS + 2 uniform points + the original


def test_cli_refuses_runs_made_with_other_settings(files, resumed):
    args = ["handbook", str(files["onnx"]), "--zoo", "resnet20", "--data", str(files["calib"]),
            "--train", str(files["train"]), "--val", str(files["val"]), "--k", "0.6",
            "--runs", str(files["root"] / "runs"), *FLAGS[:-2], "--lr", "0.05",
            "-o", str(files["root"] / "other.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "other settings" in result.output and "train" in result.output


def test_a_run_repeats_exactly_with_its_seed(files):
    """Single-threaded CPU training is deterministic: the same task twice gives the same model."""
    job = _job(files)
    from onnxmbs.handbook.engine import prepare

    task = next(t for t in prepare(job, RunStore(files["root"] / "runs")).tasks if t.variant == "uniform")
    first, again = run_task(job.trainer, task), run_task(job.trainer, task)
    assert (first.accuracy, first.params, first.alpha) == (again.accuracy, again.params, again.alpha)


@pytest.mark.parametrize("extra, message", [
    (["--model", "x.pt"], "exactly one of --zoo"),
    (["--no-data"], "--data"),
])
def test_cli_usage_errors(files, extra, message):
    args = ["handbook", str(files["onnx"]), "--zoo", "resnet20", "--data", str(files["calib"]), "--train",
            str(files["train"]), "--val", str(files["val"]), "-o", str(files["root"] / "u.json")]
    if extra == ["--no-data"]:
        args = [a for a in args if a not in ("--data", str(files["calib"]))]
    else:
        args += extra
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow  # starting Ray and two workers takes ~40 s here
def test_ray_workers_give_the_sequential_results(files, resumed, tmp_path):
    """--workers: the same runs as Ray tasks, identical to the sequential ones (1 CPU thread each)."""
    pytest.importorskip("ray")
    from onnxmbs.handbook.engine import ray_executor

    book = run_handbook(_job(files), RunStore(tmp_path / "runs"), execute=ray_executor(workers=2))
    assert {r.key: (r.accuracy, r.params) for r in book.runs} == {r.key: (r.accuracy, r.params)
                                                                 for r in resumed[0].runs}


def test_round_to_auto_plans_each_k_at_its_measured_rounding(files, tmp_path):
    """``--round-to auto`` in the handbook: each point keeps the rounding timed fastest at its k, and the
    plan trained there (and the uniform model matched to it) uses that rounding."""
    from dataclasses import replace

    from onnxmbs.compact.rounding import ROUNDINGS
    from onnxmbs.handbook.engine import prepare

    prepared = prepare(replace(_job(files), round_to="auto"), RunStore(tmp_path / "runs"))
    assert prepared.settings.round_to == "auto"
    for point in prepared.points:
        assert point.round_to in ROUNDINGS
        (mbs,) = [t for t in prepared.tasks if t.variant == "mbs" and t.k == point.k]
        assert mbs.plan.settings.round_to == point.round_to
        assert [c["round_to"] for c in mbs.plan.extra["rounding"]["candidates"]] == list(ROUNDINGS)


METRIC = '''
import numpy as np


def top1(outputs, targets):
    return float((outputs[0].argmax(1) == targets["y"]).mean())


def balanced(outputs, targets):
    pred, y = outputs[0].argmax(1), targets["y"]
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))
'''


def test_cli_user_metric_scores_every_run_and_the_table_compares_it(files, tmp_path):
    """--metric python:F:FN: each run's score is FN(outputs over --val, the .npz's other arrays); a metric
    recomputing top-1 equals the recorded top-1, and a different one (balanced accuracy) is what the table
    compares, in the metric's own units."""
    (tmp_path / "m.py").write_text(METRIC)
    books = {}
    for name in ("top1", "balanced"):
        args = ["handbook", str(files["onnx"]), "--zoo", "resnet20", "--data", str(files["calib"]),
                "--train", str(files["train"]), "--val", str(files["val"]), "--k", "1.4", "--no-original",
                "--metric", f"python:{tmp_path / 'm.py'}:{name}", "--runs", str(tmp_path / f"runs_{name}"), *FLAGS,
                "-o", str(tmp_path / f"{name}.json")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        books[name] = Handbook.from_json(json.loads((tmp_path / f"{name}.json").read_text()))
        assert "MBS score" in result.output and f"scored by python:{tmp_path / 'm.py'}:{name}" in result.output
    (run,) = books["top1"].runs
    assert run.score == pytest.approx(run.accuracy)
    (run,) = books["balanced"].runs
    y = np.load(files["val"])["y"]
    assert run.accuracy == books["top1"].runs[0].accuracy  # the same training (seed 0, one thread)
    assert run.score is not None and 0 <= run.score <= 1 and books["balanced"].rows()[0].mbs.mean == run.score
    assert len(np.unique(y)) == 3


def test_cli_user_metric_bad_file_is_one_line(files, tmp_path):
    (tmp_path / "m.py").write_text("def other(outputs, targets):\n    return 0.0\n")
    args = ["handbook", str(files["onnx"]), "--zoo", "resnet20", "--data", str(files["calib"]),
            "--train", str(files["train"]), "--val", str(files["val"]), "--k", "1.4",
            "--metric", f"python:{tmp_path / 'm.py'}:top1", *FLAGS, "-o", str(tmp_path / "x.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "defines no function 'top1'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.json").exists()


def test_cli_user_metric_that_raises_fails_before_any_training(files, tmp_path, monkeypatch):
    """The metric is tried on the given ONNX model's outputs first: a broken one costs no training run."""
    import onnxmbs.train.frameworks as frameworks

    trained = []
    monkeypatch.setattr(frameworks, "train_model", lambda *a, **k: trained.append(1) or pytest.fail("trained"))
    (tmp_path / "m.py").write_text("def broken(outputs, targets):\n    return targets['boxes'].mean()\n")
    runs = tmp_path / "runs"
    args = ["handbook", str(files["onnx"]), "--zoo", "resnet20", "--data", str(files["calib"]),
            "--train", str(files["train"]), "--val", str(files["val"]), "--k", "1.4", "--runs", str(runs),
            "--metric", f"python:{tmp_path / 'm.py'}:broken", *FLAGS, "-o", str(tmp_path / "x.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "--metric broken raised KeyError" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.json").exists()
    assert not list(runs.glob("runs/*.json")) and not trained


@pytest.mark.parametrize("spec", ["python:m.py", "iou"])
def test_cli_user_metric_spec_without_function_is_a_usage_error(files, tmp_path, spec):
    args = ["handbook", str(files["onnx"]), "--zoo", "resnet20", "--data", str(files["calib"]),
            "--train", str(files["train"]), "--val", str(files["val"]), "--k", "1.4",
            "--metric", spec, *FLAGS, "-o", str(tmp_path / "x.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "python:FILE.py:FUNCTION" in result.output, result.output
