"""Preprocessing travels with the model: ONNX metadata_props, explicit options still win."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from graphs import GraphBuilder, classifier
from onnxmbs import MBSError
from onnxmbs.workflow.plan import plan_model
from onnxmbs.data.normalisation import METADATA_KEYS, PRESETS, make_preprocess, preprocess_for, preprocess_metadata

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
CALIB = ROOT / "models" / "digits_calib"


def test_metadata_gives_the_default_and_explicit_values_win():
    meta = preprocess_metadata("caffe", std=(0.5,))
    assert set(meta) <= set(METADATA_KEYS) and meta["onnxmbs.preprocess"] == "caffe"
    from_model = preprocess_for(meta)
    assert from_model == make_preprocess("caffe", std=(0.5,)) and from_model.bgr
    assert preprocess_for(meta, "raw") == PRESETS["raw"]  # --preprocess wins, and the model's std goes with it
    assert preprocess_for({}) == PRESETS["imagenet"]
    assert preprocess_for(meta, std=(0.25,)).std == (0.25,)


def test_bad_metadata_blames_the_model_and_says_how_to_override():
    with pytest.raises(MBSError, match="pass --preprocess"):
        preprocess_for({"onnxmbs.preprocess": "yuv"}, where="m.onnx")
    with pytest.raises(MBSError, match="m.onnx has metadata onnxmbs.mean"):
        preprocess_for({"onnxmbs.preprocess": "raw", "onnxmbs.mean": "a,b"}, where="m.onnx")


def test_the_embedded_model_plans_the_same_by_default_as_with_raw():
    meta = {p.key: p.value for p in onnx.load(str(MODEL), load_external_data=False).metadata_props}
    assert meta == {"onnxmbs.preprocess": "raw"}

    def widths(**kw):
        doc = plan_model(str(MODEL), data=str(CALIB), max_images=96, progress=False, **kw).document
        return [l.compact_out_channels for l in doc.layers], doc.settings.preprocess

    default, raw, imagenet = widths(), widths(preprocess="raw"), widths(preprocess="imagenet")
    assert default == raw and default[1] == "raw"
    assert imagenet[0] != raw[0]  # so the metadata really decided it


def test_a_model_with_metadata_records_what_was_used(tmp_path):
    g = GraphBuilder(("N", 3, 8, 8))
    y = g.relu(g.conv(g.input.name, 3, 4, name="c1"))
    model = g.build([classifier(g, y, 4)])
    model.metadata_props.add(key="onnxmbs.preprocess", value="tf")
    doc = plan_model(model, synthetic=2, progress=False).document
    assert doc.settings.preprocess == "tf"


def test_zoo_export_records_the_preprocessing(tmp_path):
    pytest.importorskip("torch")
    from onnxmbs.zoo import export
    path = export("resnet20", tmp_path / "r20.onnx", widths=[4, 4, 4], dynamo=False, preprocess="raw")
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["onnxmbs.preprocess"] == "raw"
