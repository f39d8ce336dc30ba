"""Reconstruction sharded over Ray actors: the shards' normal equations add up to one process's, a killed
actor is rebuilt and its shard counted once, and `compact --reconstruct --workers` writes the same weights.

A local Ray (2 CPUs, no dashboard) is started once for the module and shut down after it.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402
from test_reconstruct import cut_plan, images, options, residual_graph  # noqa: E402

from onnxmbs.cli.compact import compact as compact_cmd  # noqa: E402
from onnxmbs.compact.fits import plan_fits  # noqa: E402
from onnxmbs.compact import writer  # noqa: E402
from onnxmbs.compact.passes import FitJob, Fitter  # noqa: E402
from onnxmbs.compact.shards import RemoteFitter, open_fitters, shard_ranges  # noqa: E402
from onnxmbs.compact.writer import compact_model  # noqa: E402
from onnxmbs.runtime.session import choose_provider  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class _Stop(Exception):
    pass


def job(data: np.ndarray, *, workers: int | None = None, monkeypatch) -> FitJob:
    """The fit job `compact --reconstruct` makes for the residual graph cut at its producer."""
    model = residual_graph()
    doc, _ = cut_plan(model, {"producer": 4})
    seen = {}

    def stop(*args):  # stop right after the surgery: only the reconstruction's arguments are needed
        seen["args"] = args
        raise _Stop

    monkeypatch.setattr(writer, "refit", stop)
    with pytest.raises(_Stop):
        compact_model(model, doc, select="l1", reconstruct=options(data))
    analysis, layouts, consts, original, compact, _ = seen["args"]
    opts = options(data, ridge=1e-3, positions=16)
    opts = replace(opts, data=replace(opts.data, provider=choose_provider("cpu"), workers=workers))
    return FitJob(plan=plan_fits(analysis, layouts, consts), original=original, compact=compact,
                  loaded=analysis.loaded, options=opts)


def test_shards_are_cut_between_whole_batches(monkeypatch):
    ranges = shard_ranges(job(images(36), workers=3, monkeypatch=monkeypatch), 3)  # 36 images, batches of 8: 5 batches
    assert ranges[0][0] == 0 and ranges[-1][1] == 36
    assert all(start % 8 == 0 for start, _ in ranges)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_fewer_batches_than_workers_says_so(monkeypatch, caplog):
    """12 images in batches of 8 are 2 batches: 3 workers get 2 shards, and the log says why."""
    sharded = job(images(12), workers=3, monkeypatch=monkeypatch)
    with caplog.at_level("WARNING", logger="onnxmbs.compact.shards"), open_fitters(sharded) as fitters:
        assert fitters.shards == 2 and fitters.images == 12
    assert "--workers 3" in caplog.text and "runs in 2 shard(s)" in caplog.text


def test_sharded_equations_equal_one_process(monkeypatch):
    x = images(36)
    local_job, sharded_job = job(x, monkeypatch=monkeypatch), job(x, workers=2, monkeypatch=monkeypatch)
    wave = min(f.wave for f in local_job.plan.fits)
    one = Fitter(local_job).equations(wave, [])
    with open_fitters(sharded_job) as fitters:
        assert fitters.images == 36 and fitters.count == 5  # every batch once, over both shards
        summed = fitters.equations(wave, [])
    assert len(one) == len(summed) > 0
    for a, b in zip(summed, one):
        assert a.rows == b.rows
        assert relative(a.a, b.a) < 1e-6 and relative(a.b, b.b) < 1e-6 and relative(a.yy, b.yy) < 1e-6


def test_a_killed_actor_is_rebuilt_and_its_shard_counted_once(tmp_path, monkeypatch):
    attempts = tmp_path / "attempts"

    class Flaky(RemoteFitter):  # the first wave call on the second shard kills its worker process
        def equations(self, wave, updates):
            with open(attempts, "a") as f:
                f.write(f"{self.first}\n")
            if self.first > 0 and attempts.read_text().split().count(str(self.first)) == 1:
                os._exit(1)
            return super().equations(wave, updates)

    x = images(32)
    local_job, sharded_job = job(x, monkeypatch=monkeypatch), job(x, workers=2, monkeypatch=monkeypatch)
    wave = min(f.wave for f in local_job.plan.fits)
    one = Fitter(local_job).equations(wave, [])
    with open_fitters(sharded_job, fitter=Flaky) as fitters:
        summed = fitters.equations(wave, [])
    assert attempts.read_text().split().count("2") == 2  # shard 2 (rows 16..32, batch 2) ran twice
    for a, b in zip(summed, one):
        assert a.rows == b.rows and relative(a.a, b.a) < 1e-6 and relative(a.b, b.b) < 1e-6


def test_compact_with_workers_writes_the_weights_one_process_writes(tmp_path):
    model_path = ROOT / "models" / "resnet20_digits.onnx"
    data = ROOT / "models" / "digits_calib.npz"
    plan = tmp_path / "plan.json"
    runner = CliRunner()
    res = runner.invoke(__import__("onnxmbs.cli", fromlist=["main"]).main,
                        ["plan", str(model_path), "--data", str(data), "--preprocess", "raw", "--k", "1",
                         "--max-images", "64", "-o", str(plan)])
    assert res.exit_code == 0, res.output
    outs = {}
    for name, extra in (("one", []), ("two", ["--workers", "2"])):
        outs[name] = tmp_path / f"{name}.onnx"
        res = runner.invoke(compact_cmd, [str(model_path), "--plan", str(plan), "-o", str(outs[name]),
                                          "--reconstruct", "--data", str(data), "--preprocess", "raw",
                                          "--max-images", "48", "--batch-size", "8", "--repeats", "0", *extra])
        assert res.exit_code == 0, res.output
        assert "re-fitted" in res.output and "on 48 images" in res.output
        assert ("in 2 shards on Ray" in res.output) == bool(extra)
        record = json.loads(Path(f"{outs[name]}.json").read_text())
        assert record["reconstruction"]["shards"] == (2 if extra else 1)
    one, two = weights(onnx.load(str(outs["one"]))), weights(onnx.load(str(outs["two"])))
    original = weights(onnx.load(str(model_path)))
    changed = [n for n in one if n in original and one[n].shape == original[n].shape
               and not np.allclose(one[n], original[n])]
    assert changed  # the reconstruction moved weights
    assert one.keys() == two.keys()
    for name in one:
        assert relative(two[name], one[name]) < 1e-3, name


def test_workers_without_reconstruct_is_a_usage_error(tmp_path):
    model_path = ROOT / "models" / "resnet20_digits.onnx"
    res = CliRunner().invoke(compact_cmd, [str(model_path), "--plan", str(tmp_path / "p.json"), "-o",
                                           str(tmp_path / "c.onnx"), "--workers", "2"])
    assert res.exit_code == 2 and "add --reconstruct" in res.output
    assert not (tmp_path / "c.onnx").exists()


def test_blocks_reconstruct_with_workers_writes_what_one_process_writes(tmp_path):
    from onnxmbs.cli.blocks import blocks as blocks_cmd

    model_path = ROOT / "models" / "resnet20_digits.onnx"
    data = ROOT / "models" / "digits_calib.npz"
    outs = {}
    for name, extra in (("one", []), ("two", ["--workers", "2"])):
        outs[name] = tmp_path / f"{name}.onnx"
        res = CliRunner().invoke(blocks_cmd, [str(model_path), "--data", str(data), "--preprocess", "raw",
                                              "--remove", "1", "--rescore", "once", "--reconstruct",
                                              "--batch-size", "16", "--output-model", str(outs[name]), *extra])
        assert res.exit_code == 0, res.output
        assert ("in 2 shards on Ray" in res.output) == bool(extra)
    one, two = weights(onnx.load(str(outs["one"]))), weights(onnx.load(str(outs["two"])))
    original = weights(onnx.load(str(model_path)))
    assert any(n in original and not np.array_equal(one[n], original[n]) for n in one)  # something was re-fitted
    assert one.keys() == two.keys()
    for name in one:
        assert relative(two[name], one[name]) < 1e-3, name  # float32 Gram products summed in another grouping


def test_an_address_nothing_answers_on_is_one_line_not_a_hang():
    from onnxmbs.errors import MBSError
    from onnxmbs.runtime.cluster import _reachable

    with pytest.raises(MBSError, match="no Ray cluster answers at '127.0.0.1:1'"):
        _reachable("127.0.0.1:1", timeout=2)
