"""The typed plan document: one from_json/to_json pair, key for key the onnxmbs.plan/1 JSON."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

import onnxmbs
from onnxmbs.errors import MBSError
from onnxmbs.planning.document import PlanDocument, macroblock_widths, read_plan

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "plan_v1_resnet20.json"  # written before the typed records existed


def test_a_plan_written_before_the_records_loads_and_writes_back_key_for_key():
    raw = json.loads(FIXTURE.read_text())
    plan = onnxmbs.read_plan(FIXTURE)
    assert isinstance(plan, PlanDocument)
    assert plan.to_json() == raw
    assert json.dumps(plan.to_json(), indent=1) == json.dumps(raw, indent=1)  # same key order too


def test_attribute_access_matches_the_json():
    raw = json.loads(FIXTURE.read_text())
    plan = read_plan(FIXTURE)
    assert plan.summary.params_compact == raw["summary"]["params_compact"]
    assert plan.macroblocks[0].beta == raw["macroblocks"][0]["beta"]
    assert [l.compact_out_channels for l in plan.layers] == [l["compact_out_channels"] for l in raw["layers"]]
    assert plan.settings.source.preprocess == raw["settings"]["preprocess"]
    assert plan.model.input_hw == tuple(raw["model"]["shape"][2:])


def test_round_trip_on_the_embedded_model(tmp_path):
    result = onnxmbs.plan_model(ROOT / "models" / "resnet20_digits.onnx", data=ROOT / "models" / "digits_calib.npz",
                                preprocess=None, max_images=64, progress=False)
    doc = result.document
    again = PlanDocument.from_json(json.loads(json.dumps(doc.to_json())))
    assert again == doc
    onnxmbs.write_json(tmp_path / "p.json", doc)
    assert read_plan(tmp_path / "p.json") == doc


def test_unknown_keys_are_kept():
    raw = json.loads(FIXTURE.read_text())
    raw["settings"]["future_setting"] = [1, 2]
    raw["layers"][0]["future_layer_key"] = "x"
    raw["future_top"] = {"a": 1}
    assert PlanDocument.from_json(raw).to_json() == raw


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("summary"), "plan summary is missing"),
    (lambda d: d["layers"][0].pop("out_channels"), r"plan layers\[0\]\.out_channels is missing"),
    (lambda d: d.update(schema="onnxmbs.stats/1"), "not an onnxmbs plan"),
    (lambda d: d["groups"][0].update(channels="many"), r'plan groups\[0\]\.channels must be an integer ≥ 1, found "many"'),
])
def test_one_schema_check_says_what_is_wrong(edit, message):
    raw = json.loads(FIXTURE.read_text())
    edit(raw)
    with pytest.raises(MBSError, match=message):
        PlanDocument.from_json(raw)


def test_widths_per_macroblock_are_the_distinct_pairs_in_layer_order():
    entries = [(0, 16, 16), (0, 16, 16), (1, 32, 30), (1, 64, 64), (None, 10, 10), (2, 64, 47), (1, 32, 30)]
    got = macroblock_widths(entries, 3)
    assert [w.pairs for w in got] == [((16, 16),), ((32, 30), (64, 64)), ((64, 47),)]
    assert got[1].before == (32, 64) and got[1].after == (30, 64)


def test_plan_widths_follow_beta():
    plan = read_plan(FIXTURE)
    for mb, widths in zip(plan.macroblocks, plan.widths()):
        for before, after in widths.pairs:
            assert after == math.ceil(mb.beta * before - 1e-9) or after == before  # frozen groups keep their width
    slim = plan.slim()
    assert all(l.channel_p_nonzero is None for l in slim.layers) and slim.summary == plan.summary
    assert "channel_p_nonzero" not in slim.to_json()["layers"][0]
    assert replace(plan, layers=slim.layers).to_json()["layers"] == slim.to_json()["layers"]
