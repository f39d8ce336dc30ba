"""First-run rough edges: a missing framework, hints that would overwrite an input, external data written
over an earlier output from its own folder, --provider values, --data with --synthetic, an incomplete shard
merge, --until-converged that ran out of data, and `check --data` without a statistics-based check."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxmbs.cli import main
from onnxmbs.cli.options import PROVIDERS
from onnxmbs.files import suggested_output, write_onnx
from onnxmbs.handbook.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
NPZ = ROOT / "models" / "digits_calib.npz"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in res.output and "unexpected" not in res.output, res.output
    return lines[0]


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    assert run("plan", MODEL, "--data", NPZ, "--max-images", "16", "-o", path).exit_code == 0
    return path


# ------------------------------------------------------------ 1. a missing framework names its extra
@pytest.fixture()
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails; find_spec says it is absent


@pytest.fixture()
def no_keras(monkeypatch):
    for name in ("tensorflow", "keras", "tf2onnx"):
        monkeypatch.setitem(sys.modules, name, None)


TORCH_LINE = "needs PyTorch, which is not installed: pip install 'onnxmbs[torch]'"
KERAS_LINE = "needs Keras (TensorFlow), which is not installed: pip install 'onnxmbs[keras]'"


def test_zoo_export_without_torch_names_the_extra(no_torch, tmp_path):
    res = run("zoo", "export", "resnet20", "-o", tmp_path / "r.onnx")
    assert TORCH_LINE in _one_line(res) and "resnet20" in res.output
    assert list(tmp_path.iterdir()) == []


def test_zoo_export_without_keras_names_the_extra(no_keras, tmp_path):
    res = run("zoo", "export", "resnet20", "--framework", "keras", "-o", tmp_path / "r.onnx")
    assert KERAS_LINE in _one_line(res)


def test_retrain_without_torch_names_the_extra(no_torch, plan_file, tmp_path):
    zoo = run("retrain", "--zoo", "resnet20", "--plan", plan_file, "--data", NPZ, "-o", tmp_path / "c.onnx")
    assert TORCH_LINE in _one_line(zoo)
    pickled = run("retrain", "--model", tmp_path / "m.pt", "--plan", plan_file, "--data", NPZ)
    assert TORCH_LINE in _one_line(pickled) and "m.pt" in pickled.output


def test_retrain_without_keras_names_the_extra(no_keras, plan_file, tmp_path):
    res = run("retrain", "--model", tmp_path / "m.keras", "--plan", plan_file, "--data", NPZ)
    assert KERAS_LINE in _one_line(res)


def test_a_users_file_importing_a_missing_framework_is_one_line(no_torch, plan_file, tmp_path):
    code = tmp_path / "net.py"
    code.write_text("def build():\n    import torch\n    return torch.nn.Linear(1, 1)\n")
    res = run("retrain", "--model", f"{code}:build", "--plan", plan_file, "--data", NPZ)
    assert TORCH_LINE in _one_line(res)


def test_handbook_without_torch_names_the_extra_and_leaves_no_runs_folder(no_torch, tmp_path):
    res = run("handbook", MODEL, "--zoo", "resnet20", "--data", NPZ, "--train", NPZ, "--val", NPZ,
              "-o", tmp_path / "hb.json")
    assert TORCH_LINE in _one_line(res)
    assert list(tmp_path.iterdir()) == []  # no hb.runs/, no hb.json


def test_a_failed_handbook_removes_only_a_runs_folder_it_created_without_finished_runs(tmp_path):
    fresh = RunStore(tmp_path / "fresh.runs")
    with pytest.raises(RuntimeError), fresh.removed_on_failure():
        (fresh.root / "stats.json").parent.mkdir(parents=True)
        (fresh.root / "settings.json").write_text("{}")
        raise RuntimeError("training failed")
    assert not fresh.root.exists()
    started = RunStore(tmp_path / "started.runs")
    with pytest.raises(RuntimeError), started.removed_on_failure():
        (started.root / "runs").mkdir(parents=True)
        (started.root / "runs" / "k1.json").write_text("{}")  # a finished run: the same command continues
        raise RuntimeError("interrupted")
    assert (started.root / "runs" / "k1.json").is_file()
    (tmp_path / "user.runs").mkdir()
    given = RunStore(tmp_path / "user.runs")
    with pytest.raises(RuntimeError), given.removed_on_failure():
        raise RuntimeError("failed")
    assert given.root.is_dir()  # the user's folder is never removed


# ------------------------------------------------------------ 2. hints never propose overwriting an input
def _proposed(output: str) -> Path:
    match = re.search(r"-o ([^`\s]+)`", output)
    assert match, output
    return Path(match[1])


@pytest.mark.parametrize("args", [
    ("compact", "models/resnet20_digits.onnx", "--plan", "models/digits_calib.npz", "-o", "{t}/c.onnx"),
    ("plan", "models/resnet20_digits.onnx", "--stats", "models/digits_calib.npz"),
    ("compact", "models/resnet20_digits.onnx", "--plan", "models/resnet20_digits.onnx", "-o", "{t}/c.onnx"),
])
def test_hints_never_propose_an_input_as_output(args, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    res = run(*(a.format(t=tmp_path) for a in args))
    proposed = _proposed(_one_line(res))
    inputs = [a for a in args if a.startswith("models/")]
    assert all(os.path.realpath(proposed) != os.path.realpath(i) for i in inputs)
    assert not proposed.exists()


def test_a_missing_file_is_proposed_as_it_was_given(tmp_path):
    res = run("compact", MODEL, "--plan", tmp_path / "p.json", "-o", tmp_path / "c.onnx")
    assert _proposed(_one_line(res)) == tmp_path / "p.json"


def test_suggested_output_is_a_free_name_beside(tmp_path):
    taken = tmp_path / "calib.npz"
    taken.write_bytes(b"x")
    assert suggested_output(taken) == tmp_path / "calib.json"
    (tmp_path / "calib.json").write_text("{}")
    assert suggested_output(taken) == tmp_path / "calib-2.json"
    assert suggested_output(tmp_path / "calib.json") == tmp_path / "calib-2.json"
    assert suggested_output(tmp_path / "new.json") == tmp_path / "new.json"


# ------------------------------------------------------------ 3. external data over an earlier output, from its folder
@pytest.fixture()
def external_model(tmp_path, monkeypatch):
    """The bundled model saved with external data in tmp_path, the working directory; its plan beside it."""
    monkeypatch.chdir(tmp_path)
    onnx.save(onnx.load(str(MODEL)), "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    assert run("plan", "model.onnx", "--data", NPZ, "--max-images", "16", "-o", "p.json").exit_code == 0
    return tmp_path


def _runs(path: str) -> tuple:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 32, 32), np.float32)
    return session.run(None, {session.get_inputs()[0].name: x})[0].shape


def test_compact_with_external_data_twice_in_the_outputs_folder(external_model):
    for _ in range(2):
        res = run("compact", "model.onnx", "--plan", "p.json", "-o", "c.onnx", "--repeats", "0")
        assert res.exit_code == 0, res.output
    assert Path("c.onnx.data").is_file() and _runs("c.onnx") == (1, 10)
    assert not [p.name for p in external_model.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_blocks_output_model_with_external_data_twice_in_its_folder(external_model):
    for _ in range(2):
        res = run("blocks", "model.onnx", "--data", NPZ, "--max-images", "16", "--remove", "1", "--rescore", "once",
                  "--output-model", "s.onnx")
        assert res.exit_code == 0, res.output
    assert Path("s.onnx.data").is_file() and _runs("s.onnx") == (1, 10)
    assert not [p.name for p in external_model.iterdir() if p.name.startswith(".")]


def test_write_onnx_replaces_model_and_data_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proto = onnx.load(str(MODEL))
    Path("out.onnx.data").write_bytes(b"an earlier output")
    size = write_onnx("out.onnx", proto, external=True)
    assert size == Path("out.onnx").stat().st_size + Path("out.onnx.data").stat().st_size
    loaded = onnx.load("out.onnx")
    assert [onnx.numpy_helper.to_array(t).tolist() for t in loaded.graph.initializer] == \
        [onnx.numpy_helper.to_array(t).tolist() for t in proto.graph.initializer]


# ------------------------------------------------------------ 4./5. every command: --provider, --data with --synthetic
def _commands(group: click.Group = main, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _options(command: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}


WITH_PROVIDER = [path for path, command in _commands() if "--provider" in _options(command)]
WITH_BOTH = [path for path, command in _commands() if {"--data", "--synthetic"} <= set(_options(command))]


def _invocation(path: tuple[str, ...], tmp_path: Path, *extra: str) -> list[str]:
    """The command with its arguments and every other required option filled in."""
    command = dict(_commands())[path]
    args = [*path, *(str(MODEL) for p in command.params if isinstance(p, click.Argument))]
    for option in command.params:
        if isinstance(option, click.Option) and option.required and option.opts[0] not in extra:
            args += [option.opts[0], str(NPZ if option.name in ("data", "train_data", "val_data")
                                          else tmp_path / f"{option.name}.json")]
    return [*args, *extra]


def test_every_provider_option_is_the_one_choice():
    assert WITH_PROVIDER and {"plan", "evaluate", "blocks"} <= {p[-1] for p in WITH_PROVIDER}
    assert all(_options(dict(_commands())[p])["--provider"].type is PROVIDERS for p in WITH_PROVIDER)


@pytest.mark.parametrize("path", WITH_PROVIDER, ids=" ".join)
def test_provider_gpu_is_a_usage_error(path, tmp_path):
    res = run(*_invocation(path, tmp_path, "--provider", "gpu"))
    assert res.exit_code == 2, res.output
    assert all(f"'{v}'" in res.output for v in ("auto", "cpu", "cuda")) and "Azure" not in res.output


@pytest.mark.parametrize("path", WITH_BOTH, ids=" ".join)
def test_data_with_synthetic_is_a_usage_error(path, tmp_path):
    assert len(WITH_BOTH) >= 5  # plan, profile, sweep, report, check
    res = run(*_invocation(path, tmp_path, "--data", str(NPZ), "--synthetic", "4"))
    assert res.exit_code == 2 and "give either --data PATH or --synthetic N, not both" in res.output, res.output
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ 6. an incomplete shard set
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    paths = []
    for i in range(3):
        paths.append(folder / f"s{i}.json")
        assert run("profile", MODEL, "--data", NPZ, "--preprocess", "raw", "--max-images", "24", "--batch-size", "8",
                   "--shard", f"{i}/3", "-o", paths[-1]).exit_code == 0
    return paths


def test_merge_refuses_an_incomplete_shard_set(shards, tmp_path):
    res = run("stats", "merge", shards[0], shards[1], "-o", tmp_path / "all.json")
    assert "shard 2/3 is missing" in _one_line(res) and "--partial" in res.output
    assert not (tmp_path / "all.json").exists()
    res = run("stats", "merge", shards[1], "-o", tmp_path / "all.json")
    assert "shards 0/3, 2/3 are missing" in _one_line(res)


def test_a_partial_merge_says_which_shards_are_missing(shards, tmp_path):
    res = run("stats", "merge", shards[0], shards[1], "--partial", "-o", tmp_path / "part.json")
    assert res.exit_code == 0 and "shard 2/3 missing" in res.output, res.output
    doc = json.loads((tmp_path / "part.json").read_text())
    parts = [json.loads(p.read_text())["images"] for p in shards]
    assert doc["data"]["missing_shards"] == ["2/3"] and doc["images"] == parts[0] + parts[1]
    whole = run("stats", "merge", *shards, "-o", tmp_path / "all.json")
    assert whole.exit_code == 0 and "missing" not in whole.output
    assert "missing_shards" not in json.loads((tmp_path / "all.json").read_text())["data"]


def test_merge_refuses_shards_of_different_splits(shards, tmp_path):
    doc = json.loads(shards[2].read_text())
    doc["data"]["shard"] = [2, 4]
    other = tmp_path / "s2of4.json"
    other.write_text(json.dumps(doc))
    res = run("stats", "merge", shards[0], other, "--partial", "-o", tmp_path / "all.json")
    assert "different splits" in _one_line(res)


# ------------------------------------------------------------ 7. --until-converged that ran out of data
def test_until_converged_that_ran_out_of_data_says_so(tmp_path):
    res = run("plan", MODEL, "--data", NPZ, "--preprocess", "raw", "--batch-size", "8", "--max-images", "40",
              "--until-converged", "--checkpoint", "32", "-o", tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    said = "stopped after 2 of 3 checkpoints: the data ended before the plan could be seen to converge"
    assert said in res.output and "widths changed" not in res.output
    conv = json.loads((tmp_path / "p.json").read_text())["convergence"]
    assert conv["converged"] is False and conv["checkpoints"] == 2 and said in conv["reason"]


def test_an_unreachable_tolerance_says_the_bound_is_the_reason(tmp_path):
    res = run("plan", MODEL, "--data", NPZ, "--preprocess", "raw", "--batch-size", "8", "--max-images", "96",
              "--until-converged", "--checkpoint", "32", "--tolerance", "1e-12", "--json")
    conv = json.loads(res.stdout)["convergence"]
    assert conv["checkpoints"] == 3 and "is not below the tolerance" in conv["reason"]


# ------------------------------------------------------------ 8. check --data with no statistics-based check
def test_check_says_when_data_is_not_measured(caplog):
    res = run("check", MODEL, "--data", NPZ, "--max-params", "1M")
    assert res.exit_code == 0 and "--data is not measured" in caplog.text
    caplog.clear()
    res = run("check", MODEL, "--data", NPZ, "--max-images", "16", "--max-redundancy", "1")
    assert res.exit_code == 0, res.output
    assert "not measured" not in caplog.text
