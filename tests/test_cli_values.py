"""Bad option values are click errors (exit 2); stats files are never silently ignored or overwritten."""
from __future__ import annotations

import onnx
import pytest
from click.testing import CliRunner

from graphs import GraphBuilder, classifier
from onnxmbs import MBSError
from onnxmbs.cli import main
from onnxmbs.data.normalisation import make_preprocess


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tiny(path, width=4):
    g = GraphBuilder(("N", 3, 8, 8))
    y = g.relu(g.conv(g.relu(g.conv(g.input.name, 3, width, name="c1")), width, width, stride=2, name="c2"))
    onnx.save(g.build([classifier(g, y, width)]), str(path))
    return path


@pytest.mark.parametrize("args", [("--k", "-1"), ("--z", "0"), ("--std", "0"), ("--std", "0.2,-1"),
                                  ("--mean", "120"), ("--mean", "nan"), ("--k", "1", "--z", "4")])
def test_bad_option_values_exit_2(tmp_path, args):
    result = run("plan", tiny(tmp_path / "m.onnx"), "--synthetic", "2", *args)
    assert result.exit_code == 2, result.output
    assert "custom" not in result.output and "Traceback" not in result.output


def test_sweep_k_range_is_a_bad_parameter(tmp_path):
    result = run("sweep", tiny(tmp_path / "m.onnx"), "--synthetic", "2", "--k", "-1:1:0.5")
    assert result.exit_code == 2 and "Invalid value for '--k'" in result.output


def test_handbook_k_range_is_the_same_bad_parameter(tmp_path):
    """The handbook reads --k with the sweep's type: a bad range is exit 2 before any training."""
    model = tiny(tmp_path / "m.onnx")
    result = run("handbook", model, "--zoo", "resnet20", "--data", model, "--train", model, "--val", model,
                 "--k", "1:x", "-o", tmp_path / "h.json")
    assert result.exit_code == 2 and "Invalid value for '--k'" in result.output
    assert not (tmp_path / "h.json").exists()


def test_preprocess_errors_name_only_what_the_user_gave():
    with pytest.raises(MBSError) as err:
        make_preprocess("imagenet", std=(0.0,))
    assert "custom" not in str(err.value) and "imagenet" in str(err.value)


def test_check_refuses_stats_with_synthetic_and_a_missing_stats_file(tmp_path):
    model = tiny(tmp_path / "m.onnx")
    missing = tmp_path / "missing.json"
    both = run("check", model, "--stats", missing, "--synthetic", "4", "--max-redundancy", "0.5")
    assert both.exit_code == 2 and "PASS" not in both.output
    data = tmp_path / "x.npy"
    import numpy as np
    np.save(data, np.zeros((2, 3, 8, 8), np.uint8))
    fallback = run("check", model, "--stats", missing, "--data", data, "--max-redundancy", "0.5")
    assert fallback.exit_code == 1 and "not found" in fallback.output


def test_stats_mismatch_never_suggests_overwriting_another_models_file(tmp_path):
    a, b = tiny(tmp_path / "a.onnx"), tiny(tmp_path / "b.onnx", width=6)
    assert run("profile", a, "--synthetic", "2", "-o", tmp_path / "a.json").exit_code == 0
    result = run("plan", b, "--stats", tmp_path / "a.json")
    assert result.exit_code == 1
    assert f"-o {tmp_path / 'a.json'}" not in result.output and f"-o {tmp_path / 'b.stats.json'}" in result.output
