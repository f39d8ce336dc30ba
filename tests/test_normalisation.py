"""One rule for normalisation (flag > the model's metadata > imagenet), used by every command that reads images.

The failures this pins (found by trying the CLI as a new user): `compact --reconstruct` and
`--eval-data` read the embedded model's PNG images with the imagenet default although the model's
metadata says raw (55 % instead of 99 % held-out), and `retrain -o` wrote no metadata.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxmbs.cli import main
from onnxmbs.data.normalisation import (PRESETS, Normalisation, resolve_normalisation, set_metadata)
from onnxmbs.errors import MBSError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
IMAGES = ROOT / "models" / "digits_calib"  # 0..9 class folders of uint8 PNGs: normalisation matters
ARRAYS = ROOT / "models" / "digits_calib.npz"  # the same digits as float arrays in [0, 1]: used as they are
FROM_META = f"normalisation of {MODEL}: raw (from the model's metadata onnxmbs.preprocess)"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """The embedded model without its onnxmbs.preprocess metadata."""
    proto = onnx.load(str(MODEL))
    del proto.metadata_props[:]
    path = tmp_path_factory.mktemp("bare") / "bare.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    res = run("plan", MODEL, "--data", ARRAYS, "--max-images", "64", "-o", path)
    assert res.exit_code == 0, res.output
    return path


def test_the_rule():
    meta = {"onnxmbs.preprocess": "raw"}
    assert resolve_normalisation(meta) == Normalisation("raw", origin="model metadata")
    assert resolve_normalisation(meta, "tf") == Normalisation("tf", origin="flag")
    assert resolve_normalisation({}) == Normalisation("imagenet", origin="default")
    only_mean = resolve_normalisation(meta, mean=(0.5,))  # the flag overrides the mean, the preset stays
    assert only_mean.preset == "raw" and only_mean.mean == (0.5,) and only_mean.origin == "flag"
    custom = resolve_normalisation({**meta, "onnxmbs.mean": "0.1,0.2,0.3", "onnxmbs.std": "0.5"})
    np.testing.assert_allclose(custom.preprocess.apply(np.full((1, 1, 1, 3), 255.0))[0, 0, 0],
                               [(1 - 0.1) / 0.5, (1 - 0.2) / 0.5, (1 - 0.3) / 0.5], rtol=1e-6)
    recorded = Normalisation("caffe", origin="flag")  # retrain: a framework model has no ONNX metadata
    assert resolve_normalisation({}, recorded=recorded).origin == "record"
    assert resolve_normalisation({}, "raw", recorded=recorded).preset == "raw"
    with pytest.raises(MBSError, match="not one of"):
        resolve_normalisation({"onnxmbs.preprocess": "torchvision"})


def test_record_round_trip_and_bad_values():
    norm = resolve_normalisation({}, "imagenet", std=(0.25, 0.25, 0.25))
    assert Normalisation.from_json(json.loads(json.dumps(norm.to_json()))) == norm
    for bad in ({"preset": 3}, {"preset": "raw", "mean": "0.5"}, {"preset": "raw", "origin": "guess"},
                {"preset": "raw", "std": [0]}, [1, 2]):
        with pytest.raises(MBSError):
            Normalisation.from_json(bad, where="x.json")


def test_set_metadata_replaces_keys_and_drops_a_stale_mean():
    proto = onnx.load(str(MODEL))
    set_metadata(proto, {"onnxmbs.preprocess": "imagenet", "onnxmbs.mean": "0.5"})
    set_metadata(proto, resolve_normalisation({}, "raw", announce=False).metadata())
    keys = [p.key for p in proto.metadata_props]
    assert keys.count("onnxmbs.preprocess") == 1 and "onnxmbs.mean" not in keys
    assert {p.key: p.value for p in proto.metadata_props}["onnxmbs.preprocess"] == "raw"


def _expected_top1() -> float:
    """Top-1 of the embedded model on the float digits, computed here with onnxruntime directly."""
    import onnxruntime as ort

    with np.load(ARRAYS) as npz:
        x, y = npz["x"], npz["y"]
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.mean(scores.argmax(1) == y))


def test_evaluate_reads_uint8_images_with_the_models_normalisation(bare):
    expected = _expected_top1()
    res = run("evaluate", MODEL, "--data", IMAGES, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top1"] == pytest.approx(expected, abs=2 / 360)  # PNG rounding: <= 2 images
    assert FROM_META in res.stderr
    default = run("evaluate", bare, "--data", IMAGES, "--json")
    assert f"normalisation of {bare}: imagenet (the default" in default.stderr
    assert json.loads(default.stdout)["top1"] < expected - 0.2  # what silently happened before


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_compact_reconstruct_and_eval_data_follow_the_models_metadata(plan, tmp_path):
    outs = {}
    for name, flags in (("meta", []), ("raw", ["--preprocess", "raw"]), ("imagenet", ["--preprocess", "imagenet"])):
        out = tmp_path / f"{name}.onnx"
        res = run("compact", MODEL, "--plan", plan, "-o", out, "--reconstruct", "--data", IMAGES, "--max-images", "32",
                  "--repeats", "0", "--eval-data", ARRAYS, *flags)
        assert res.exit_code == 0, res.output
        outs[name] = (out, res)
    record = json.loads(Path(str(outs["meta"][0]) + ".json").read_text())
    assert record["normalisation"] == {"preset": "raw", "mean": None, "std": None, "origin": "model metadata"}
    assert FROM_META in outs["meta"][1].stderr
    meta, raw, imagenet = (_weights(outs[k][0]) for k in ("meta", "raw", "imagenet"))
    assert all(np.array_equal(meta[k], raw[k]) for k in meta)  # no flag = the model's own normalisation
    assert any(not np.allclose(meta[k], imagenet[k]) for k in meta)
    top1 = [float(m) for m in re.findall(r"-> ([0-9.]+)%", outs["meta"][1].stdout)]
    assert top1 and top1[0] > 90.0  # reconstructed on the right normalisation the model keeps its accuracy
    for out, _ in outs.values():  # every compact file carries its source's metadata
        assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}["onnxmbs.preprocess"] == "raw"


COMMANDS = {
    "plan": ["plan", "{m}", "--data", IMAGES, "--max-images", "16", "-o", "{t}/plan.json"],
    "profile": ["profile", "{m}", "--data", IMAGES, "--max-images", "16", "-o", "{t}/stats.json"],
    "sweep": ["sweep", "{m}", "--data", IMAGES, "--max-images", "16", "--k", "1"],
    "report": ["report", "{m}", "--data", IMAGES, "--max-images", "16", "-o", "{t}/r.json"],
    "check": ["check", "{m}", "--data", IMAGES, "--max-images", "16", "--max-redundancy", "1"],
    "evaluate": ["evaluate", "{m}", "--data", IMAGES, "--max-images", "40"],
    "blocks": ["blocks", "{m}", "--data", IMAGES, "--max-images", "40", "--remove", "1", "-o", "{t}/blocks.json"],
}
RECORDS = {"plan": ("plan.json", ("settings", "normalisation")), "profile": ("stats.json", ("data", "normalisation")),
           "report": ("r.json", ("models", 0, "plan", "settings", "normalisation")),
           "blocks": ("blocks.json", ("settings", "normalisation"))}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_that_reads_images_goes_through_the_rule(command, tmp_path, bare):
    """The decision line comes from resolve_normalisation only: each command shows it, with the right origin,
    and records what it used."""
    for model, flags, line in ((MODEL, [], FROM_META),
                               (bare, [], f"normalisation of {bare}: imagenet (the default"),
                               (bare, ["--preprocess", "raw"], f"normalisation of {bare}: raw (given by --preprocess")):
        args = [str(a).format(m=model, t=tmp_path) for a in COMMANDS[command]] + flags
        res = run(*args)
        assert res.exit_code == 0, res.output
        assert res.stderr.count(line) == 1, res.stderr
        if command in RECORDS and model == MODEL:
            name, keys = RECORDS[command]
            doc = json.loads((tmp_path / name).read_text())
            for key in keys:
                doc = doc[key]
            assert doc == {"preset": "raw", "mean": None, "std": None, "origin": "model metadata"}


def test_bad_input_is_still_one_line(bare):
    res = run("evaluate", MODEL, "--data", ARRAYS.with_name("missing.npz"))
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "normalisation" not in res.output


def test_one_declaration_and_no_second_decider():
    package = ROOT / "onnxmbs"
    sources = {p: p.read_text() for p in package.rglob("*.py")}
    for option in ("--preprocess", "--mean", "--std"):
        declared = [p for p, text in sources.items() if f'click.option("{option}"' in text]
        assert [p.name for p in declared] == ["options.py"], option
        assert sum(text.count(f'click.option("{option}"') for text in sources.values()) == 1
    rule = package / "data" / "normalisation.py"
    others = {p: t for p, t in sources.items() if p != rule}
    assert not [p for p, t in others.items() if "make_preprocess(" in t or "preprocess_for(" in t]
    assert not [p for p, t in others.items() if 'PRESETS["' in t or "META_PRESET" in t]
