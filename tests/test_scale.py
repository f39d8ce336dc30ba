"""Statistics at scale without Ray: --until-converged, data order and shards, `profile --shard` + `stats merge`."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxmbs.cli import main
from onnxmbs.graph.analysis import analyze
from onnxmbs.planning.convergence import ConvergeOptions, default_tolerance
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.workflow.plan import plan_model
from onnxmbs.data.calibration import open_calibration
from onnxmbs.stats.measure import CalibrationOptions, measure
from onnxmbs.data.sources import Order, shard_rows

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
FOLDER = ROOT / "models" / "digits_calib"
NPZ = ROOT / "models" / "digits_calib.npz"
QUICK = ConvergeOptions(checkpoint=32)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _widths(doc) -> list[int]:
    return [layer["compact_out_channels"] for layer in doc["layers"]]


@pytest.fixture(scope="module")
def analysis():
    return analyze(MODEL)


@pytest.fixture(scope="module")
def full_plan(analysis):
    stats, _ = measure(analysis, CalibrationOptions(data=FOLDER, preprocess="raw", batch_size=8, progress=False))
    return plan_from_statistics(analysis, stats).document.to_json()


@pytest.fixture(scope="module")
def converged():
    return plan_model(MODEL, data=FOLDER, preprocess="raw", batch_size=8, progress=False,
                      converge=QUICK).document.to_json()


def test_convergence_gives_the_full_pass_widths_with_fewer_images(full_plan, converged):
    conv = converged["convergence"]
    assert conv["converged"] is True
    assert full_plan["settings"]["images"] == 360
    assert conv["images"] == converged["settings"]["images"] < 360
    assert conv["images"] % QUICK.checkpoint == 0 and conv["checkpoints"] >= 3
    assert _widths(converged) == _widths(full_plan)
    # β ± bound per macroblock at the plan's k; every bound below the tolerance 0.5 / C_max = 0.5 / 64
    assert conv["tolerance"] == pytest.approx(0.5 / 64)
    (entry,) = conv["entries"]  # the plan's own threshold
    assert entry["k"] == 1.0 and entry["z"] == converged["settings"]["z"]
    assert [m["index"] for m in entry["macroblocks"]] == [0, 1, 2]
    for mine, plan_mb, full_mb in zip(entry["macroblocks"], converged["macroblocks"], full_plan["macroblocks"]):
        assert mine["beta"] == pytest.approx(plan_mb["beta"], abs=1e-6)
        assert 0 <= mine["bound"] < conv["tolerance"]
        assert abs(mine["beta"] - full_mb["beta"]) <= mine["bound"]  # the full pass's β lies within the bound
    # the existing keys are untouched
    assert set(full_plan) <= set(converged) and set(converged) - set(full_plan) == {"convergence"}


def test_convergence_is_deterministic(converged):
    again = plan_model(MODEL, data=FOLDER, preprocess="raw", batch_size=8, progress=False,
                       converge=QUICK).document.to_json()
    assert again["convergence"] == converged["convergence"]
    assert [l["p_nonzero"] for l in again["layers"]] == [l["p_nonzero"] for l in converged["layers"]]


def test_an_unreachable_tolerance_reads_everything_and_says_so(analysis, full_plan, caplog):
    doc = plan_model(MODEL, data=FOLDER, preprocess="raw", batch_size=8, max_images=96, progress=False,
                     converge=ConvergeOptions(tolerance=1e-12, checkpoint=32)).document.to_json()
    assert doc["convergence"]["converged"] is False and doc["settings"]["images"] == 96
    assert "not converged" in caplog.text


def test_default_tolerance_is_half_a_channel_of_the_widest_group(analysis):
    assert default_tolerance(analysis) == 0.5 / 64


def test_the_table_shows_bounds_only_when_converging(tmp_path):
    res = run("plan", MODEL, "--data", FOLDER, "--preprocess", "raw", "--batch-size", "8", "--until-converged",
              "--checkpoint", "32")
    assert res.exit_code == 0, res.output
    assert "+/- bound" in res.output and "converged after" in res.output
    plain = run("plan", MODEL, "--data", NPZ, "--preprocess", "raw", "--max-images", "16")
    assert "+/- bound" not in plain.output and "converged" not in plain.output


# ------------------------------------------------------------ order and shards
@pytest.mark.parametrize("total,count,batch", [(360, 3, 32), (10, 4, 1), (7, 3, 4), (5, 8, 2)])
def test_shards_partition_the_batches(total, count, batch):
    rows = [shard_rows(total, i, count, batch_size=batch) for i in range(count)]
    assert rows[0][0] == 0 and rows[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert all(start % batch == 0 for start, _ in rows)


@pytest.mark.parametrize("source", ["npy", "folder", "npz", "noise"])
def test_shuffled_shards_read_exactly_the_shuffled_whole(tmp_path, source):
    pixels = np.random.default_rng(1).integers(0, 256, (23, 8, 8, 1), dtype=np.uint8)
    if source == "npy":
        data = tmp_path / "x.npy"
        np.save(data, pixels)
    elif source == "npz":
        data = tmp_path / "x.npz"
        np.savez(data, x=pixels)
    elif source == "folder":
        from PIL import Image
        for i, p in enumerate(pixels):
            Image.fromarray(p[..., 0]).save(tmp_path / f"{i:02d}.png")
        data = tmp_path
    else:
        data = None
    kw = dict(shape=(1, 1, 8, 8), layout="NCHW", batch_size=4, max_images=21, synthetic=23 if data is None else None)
    shuffle = None if source == "npz" else 5  # npz is a stream: file order only
    whole = np.concatenate(list(open_calibration(data, order=Order(shuffle=shuffle), **kw)))
    parts = [np.concatenate(list(open_calibration(data, order=Order(shuffle=shuffle, shard=(i, 3)), **kw)))
             for i in range(3)]
    assert whole.shape[0] == 21 and np.array_equal(np.concatenate(parts), whole)
    plain = np.concatenate(list(open_calibration(data, **kw)))
    if shuffle is not None:  # a permutation of the first rows of the permuted order, not the file order
        assert not np.array_equal(plain, whole)


def test_profile_shards_merged_equal_the_whole_pass(tmp_path):
    args = ("--data", NPZ, "--preprocess", "raw", "--max-images", "100", "--batch-size", "16")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"s{i}.json")
        res = run("profile", MODEL, *args, "--shard", f"{i}/3", "-o", paths[-1])
        assert res.exit_code == 0 and f"shard {i}/3" in res.output
    assert run("profile", MODEL, *args, "-o", tmp_path / "whole.json").exit_code == 0
    res = run("stats", "merge", *paths, "-o", tmp_path / "all.json")
    assert res.exit_code == 0, res.output
    merged, whole = (json.loads((tmp_path / n).read_text()) for n in ("all.json", "whole.json"))
    assert merged["images"] == whole["images"] == 100
    assert [json.loads(p.read_text())["data"]["shard"] for p in paths] == [[0, 3], [1, 3], [2, 3]]
    assert merged["taps"] == whole["taps"]
    plan = run("plan", MODEL, "--stats", tmp_path / "all.json", "--json")
    assert json.loads(plan.stdout)["settings"]["images"] == 100


@pytest.fixture()
def two_shards(tmp_path):
    out = []
    for i in range(2):
        out.append(tmp_path / f"s{i}.json")
        assert run("profile", MODEL, "--data", NPZ, "--preprocess", "raw", "--max-images", "16", "--batch-size", "8",
                   "--shard", f"{i}/2", "-o", out[-1]).exit_code == 0
    return out


@pytest.mark.parametrize("change,what", [
    (lambda d: d["model"].update(sha256="0" * 64), "different models"),
    (lambda d: d["model"].update(shape=[1, 3, 64, 64]), "different input shapes"),
    (lambda d: d["data"].update(preprocess="imagenet"), "different preprocessing"),
])
def test_merge_refuses_mismatched_files(two_shards, tmp_path, change, what):
    doc = json.loads(two_shards[1].read_text())
    change(doc)
    two_shards[1].write_text(json.dumps(doc))
    res = run("stats", "merge", *two_shards, "-o", tmp_path / "all.json")
    assert res.exit_code == 1 and what in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "all.json").exists()


def test_merge_refuses_a_shard_twice_and_its_own_input(two_shards, tmp_path):
    res = run("stats", "merge", two_shards[0], two_shards[0], "-o", tmp_path / "all.json")
    assert res.exit_code == 1 and "shard 0/2 is given twice" in res.output
    assert run("stats", "merge", *two_shards, "-o", two_shards[0]).exit_code == 2


# ------------------------------------------------------------ CLI exits
@pytest.mark.parametrize("args,message", [
    (("plan", MODEL, "--data", NPZ, "--tolerance", "0.01"), "--tolerance applies to --until-converged"),
    (("plan", MODEL, "--data", NPZ, "--checkpoint", "64"), "--checkpoint applies to --until-converged"),
    (("check", MODEL, "--data", NPZ, "--converge-tolerance", "0.01"), "--converge-tolerance applies"),
    (("profile", MODEL, "--data", NPZ, "--shard", "3/3", "-o", "x.json"), "is not a shard like 0/4"),
    (("profile", MODEL, "--data", NPZ, "--shard", "0/2", "--workers", "2", "-o", "x.json"), "--shard counts one"),
    (("plan", MODEL, "--data", NPZ, "--until-converged", "--tolerance", "0"), "--tolerance"),
])
def test_usage_errors_exit_2(args, message):
    res = run(*args)
    assert res.exit_code == 2 and message in res.output


def test_an_empty_shard_is_one_line():
    res = run("profile", MODEL, "--data", NPZ, "--max-images", "16", "--shard", "0/2", "-o", "x.json")
    assert res.exit_code == 1 and "shard 0/2 holds no images" in res.output


def test_workers_without_ray_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    res = run("profile", MODEL, "--data", NPZ, "--workers", "2", "-o", "x.json")
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "pip install 'onnxmbs[ray]'" in res.output


def test_sweep_report_and_check_converge_too(tmp_path):
    quick = ("--data", FOLDER, "--preprocess", "raw", "--batch-size", "8", "--until-converged", "--checkpoint", "32")
    sweep = run("sweep", MODEL, *quick, "--k", "0.6,1", "--json")
    conv = json.loads(sweep.stdout)["convergence"]
    assert sweep.exit_code == 0 and conv["converged"] and conv["images"] < 360
    assert sorted(e["k"] for e in conv["entries"]) == [0.6, 1.0]  # one entry per monitored RF boundary
    report = run("report", MODEL, *quick, "--sweep", "1", "-o", tmp_path / "r.md")
    assert report.exit_code == 0 and "converged after" in (tmp_path / "r.md").read_text()
    check = run("check", MODEL, *quick, "--max-redundancy", "0.5", "--converge-tolerance", "0.01")
    assert check.exit_code == 0 and "PASS" in check.output


def test_ray_address_without_a_cluster_is_one_line(monkeypatch, tmp_path):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray is running in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # 'auto' must not find a cluster another process runs on this machine: Ray looks in its temp dir's
    # address file, then (legacy) for any gcs_server process
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr("ray._private.services._cached_find_gcs_addresses", functools.lru_cache(lambda: []),
                        raising=False)
    res = run("profile", MODEL, "--data", NPZ, "--max-images", "16", "--ray-address", "auto", "-o", tmp_path / "s.json")
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "cannot start or join Ray at 'auto'" in res.output and "ray start --head" in res.output
