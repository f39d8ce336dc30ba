"""The statistics pass sharded over Ray: exact counts, retries that count nothing twice, convergence.

A local Ray (2 CPUs, no dashboard) is started once for the module and shut down after it.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from onnxmbs.cli import main  # noqa: E402
from onnxmbs.runtime.cluster import connect, run_ordered  # noqa: E402
from onnxmbs.errors import MBSError  # noqa: E402
from onnxmbs.graph.analysis import analyze  # noqa: E402
from onnxmbs.planning.convergence import ConvergeOptions  # noqa: E402
from onnxmbs.workflow.plan import plan_model  # noqa: E402
from onnxmbs.runtime.session import choose_provider  # noqa: E402
from onnxmbs.stats.counting import instrument  # noqa: E402
from onnxmbs.stats.measure import CalibrationOptions, measure  # noqa: E402
from onnxmbs.data.normalisation import make_preprocess  # noqa: E402
from onnxmbs.stats.sharding import CountJob, DataSpec, count_rows, plan_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
FOLDER = ROOT / "models" / "digits_calib"
NPZ = ROOT / "models" / "digits_calib.npz"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def analysis():
    return analyze(MODEL)


def _counts(stats) -> dict[str, list[int]]:
    return {name: tap.nonzero.tolist() for name, tap in stats.taps.items()}


def test_two_workers_count_exactly_what_one_process_counts(analysis):
    options = CalibrationOptions(data=FOLDER, preprocess="raw", max_images=200, batch_size=16, progress=False)
    single, _ = measure(analysis, options)
    sharded, info = measure(analysis, replace(options, workers=2))
    assert sharded.images == single.images == info.images == 200
    assert _counts(sharded) == _counts(single)


def test_a_shard_whose_worker_dies_is_rerun_and_counted_once(analysis, tmp_path):
    spec = DataSpec(data=str(NPZ), synthetic=None, preprocess=make_preprocess("raw"),
                    shape=tuple(analysis.loaded.input.shape), layout="NCHW", max_images=96, batch_size=16)
    job = CountJob(counting=instrument(analysis), provider=choose_provider("cpu"), data=spec, threads=1)
    attempts = tmp_path / "attempts"

    def flaky(job, rows):  # the first attempt at shard 1 kills its worker process
        with open(attempts, "a") as f:
            f.write(f"{rows[0]}\n")
        if rows[0] == 32 and attempts.read_text().split().count("32") == 1:
            os._exit(1)
        return count_rows(job, rows)

    ranges = plan_rows(96, batch_size=16, workers=1, task_images=32)
    assert ranges == [(0, 32), (32, 64), (64, 96)]
    results = list(run_ordered(flaky, [(r,) for r in ranges], shared=job, window=3, retries=2, progress=False))
    assert attempts.read_text().split().count("32") == 2  # it failed once and ran again
    assert [r.images for r in results] == [32, 32, 32]
    total = np.sum([r.counts for r in results], axis=0)
    single, _ = measure(analysis, CalibrationOptions(data=NPZ, preprocess="raw", max_images=96, batch_size=16,
                                                     progress=False))
    expected = np.concatenate([single.taps[name].nonzero for name in job.counting.slices])
    assert np.array_equal(total, expected)


def test_a_failing_task_is_one_clean_error():
    def broken(shared, i):
        raise MBSError(f"shard {i} cannot read its data — check the path")

    with pytest.raises(MBSError, match="^shard 0 cannot read its data"):
        list(run_ordered(broken, [(0,)], retries=0, progress=False))


def test_convergence_with_workers_stops_where_one_process_stops():
    options = dict(data=FOLDER, preprocess="raw", batch_size=8, progress=False, converge=ConvergeOptions(checkpoint=32))
    single = plan_model(MODEL, **options).document.to_json()
    sharded = plan_model(MODEL, workers=2, **options).document.to_json()
    assert sharded["convergence"] == single["convergence"] and sharded["convergence"]["converged"]
    assert [l["p_nonzero"] for l in sharded["layers"]] == [l["p_nonzero"] for l in single["layers"]]


def test_profile_with_workers_joins_the_running_ray(tmp_path):
    with connect(None) as joined:  # Ray is initialised: used as it is, not shut down
        assert joined.is_initialized()
    assert ray.is_initialized()
    res = CliRunner().invoke(main, ["profile", str(MODEL), "--data", str(NPZ), "--preprocess", "raw",
                                    "--max-images", "64", "--workers", "2", "-o", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "64 images" in res.output
