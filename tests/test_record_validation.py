"""Every file onnxmbs reads is a typed record whose fields are all checked.

Real files (a stats file, a plan, a blocks plan and a compact record of the bundled model) are
mutated deterministically: each field set to a wrong type (a path string, a bool, a negative
number, null, a list, an object), out of range, or removed. Whether a mutation is harmless is
decided here, by this file's own table of what each field may hold; a harmless one must load to
a record that writes back the mutated file, any other must give one MBSError line that names the
file and the field — never another exception.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import onnxmbs
from onnxmbs.cli import main
from onnxmbs.errors import MBSError

ROOT = Path(__file__).resolve().parents[1]
MODEL = "models/resnet20_digits.onnx"
NPZ = "models/digits_calib.npz"
PASSWD = "../../etc/passwd"
WRONG = (PASSWD, True, False, -1, 0, 1, 2.5, 0.5, None, [], {}, [1, 2])  # every field gets each of these


# what a field may hold, as this test reads the file formats (docs/commands.md)
def count(low=0):
    return lambda v: type(v) is int and v >= low


def number(low=None, high=None):
    return lambda v: type(v) in (int, float) and (low is None or v >= low) and (high is None or v <= high)


def boolean(v):
    return type(v) is bool


def string(v):
    return type(v) is str


def one_of(*options):
    return lambda v: type(v) is str and v in options


def maybe(kind):
    return lambda v: v is None or kind(v)


def list_of(kind):
    return lambda v: type(v) is list and all(kind(x) for x in v)


def equal_to(value):
    return lambda v: type(v) is type(value) and v == value


def sha(v):
    return type(v) is str and re.fullmatch("[0-9a-f]{64}", v) is not None


FRACTION = number(0, 1)
MODEL_FIELDS = {("model", "L"): count(), ("model", "sha256"): sha, ("model", "layout"): one_of("NCHW", "NHWC"),
                ("model", "shape"): list_of(count(1)), ("model", "path"): maybe(string), ("model", "input"): string}
FIELDS = {
    "plan": {**MODEL_FIELDS,
             ("settings", "k"): maybe(number(0)), ("settings", "z"): number(0), ("settings", "images"): count(),
             ("settings", "synthetic"): boolean, ("settings", "round_to"): count(1),
             ("settings", "statistic"): one_of("extended", "paper"), ("settings", "skipped"): count(),
             ("settings", "data"): maybe(string), ("settings", "rf_boundary"): maybe(count()),
             ("layers", 3, "p_nonzero"): FRACTION, ("layers", 3, "statistic"): maybe(one_of("nonzero", "positive")),
             ("layers", 3, "out_channels"): count(1), ("layers", 3, "kernel"): list_of(count(1)),
             ("layers", 0, "measured"): boolean, ("layers", 2, "name"): string,
             ("layers", 1, "channel_p_nonzero"): maybe(list_of(FRACTION)), ("layers", 4, "rf"): maybe(count()),
             ("macroblocks", 1, "beta"): FRACTION, ("macroblocks", 0, "layers"): list_of(string),
             ("groups", 2, "compact_channels"): count(1), ("groups", 0, "frozen"): maybe(string),
             ("summary", "params_compact"): count(), ("summary", "unknown_ops"): lambda v: v == {} and type(v) is dict},
    "stats": {**{k: v for k, v in MODEL_FIELDS.items() if k != ("model", "L")},
              ("images",): count(),  # and no fewer than the counts need (see acceptable)
              ("seconds",): number(0), ("provider",): string,
              ("statistic",): one_of("extended", "paper"), ("data",): lambda v: False,
              ("data", "synthetic"): boolean, ("data", "skipped"): count(), ("data", "source"): maybe(string),
              ("data", "preprocess"): maybe(string), ("taps",): lambda v: v == [],
              ("taps", 2, "tensor"): string, ("taps", 2, "per_image"): lambda v: count(1)(v) and v >= 32 * 32,
              ("taps", 2, "channels"): equal_to(16), ("taps", 2, "nonzero"): lambda v: False},
    "blocks": {**MODEL_FIELDS, ("baseline_accuracy",): FRACTION, ("removed",): lambda v: False,
               ("blocks", 0, "removable"): boolean, ("blocks", 0, "params"): count(), ("blocks", 1, "nodes"): list_of(string),
               ("blocks", 1, "reason"): string, ("rounds", 0, "accuracy"): FRACTION, ("rounds", 0, "round"): count(1),
               ("summary", "macs_after"): count(), ("settings", "rescore"): one_of("every", "once", "refit"),
               ("settings", "remove"): maybe(count(1)), ("settings", "max_accuracy_drop"): maybe(FRACTION),
               ("settings", "images"): count(), ("settings", "provider"): string},
    "compact": {("weights",): one_of("inherit", "random"), ("select",): one_of("nonzero", "l1", "greedy"),
                ("params_compact",): count(), ("bytes_compact",): count(), ("inexact",): list_of(string),
                ("latency", "repeats"): count(), ("latency", "batch"): count(1), ("latency", "compact_ms"): number(0),
                ("groups", 0, "selected_by"): one_of("nonzero", "l1", "greedy", "all"),
                ("groups", 0, "kept"): lambda v: False, ("groups", 0, "compact_channels"): lambda v: False},
}
OPTIONAL = {  # keys a file may lack (older files, or nothing to record)
    "plan": {("settings", "statistic"), ("layers", 3, "statistic"), ("layers", 1, "channel_p_nonzero")},
    "stats": {("statistic",)},
    "blocks": set(),
    "compact": set(),
}
SAMPLES = {  # a value of the right type for the lists of values: wrong items go in here
    ("layers", 3, "kernel"): 3, ("macroblocks", 0, "layers"): "node_Conv_306", ("blocks", 1, "nodes"): "n"}


def field_name(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, dict]:
    """Real files of the bundled model, written by the commands."""
    tmp = tmp_path_factory.mktemp("real")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for args in (["profile", MODEL, "--data", NPZ, "--max-images", "32", "-o", tmp / "stats.json"],
                     ["plan", MODEL, "--stats", tmp / "stats.json", "-o", tmp / "plan.json"],
                     ["blocks", MODEL, "--data", NPZ, "--max-images", "32", "--remove", "1", "-o", tmp / "blocks.json"],
                     ["compact", MODEL, "--plan", tmp / "plan.json", "--repeats", "1", "-o", tmp / "c.onnx"]):
            res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
            assert res.exit_code == 0, res.output
    finally:
        os.chdir(cwd)
    names = {"stats": "stats.json", "plan": "plan.json", "blocks": "blocks.json", "compact": "c.onnx.json"}
    docs = {kind: json.loads((tmp / name).read_text()) for kind, name in names.items()}
    assert docs["stats"]["model"]["shape"][2:] == [32, 32] and docs["stats"]["taps"][2]["channels"] == 16
    return docs


READ = {"plan": onnxmbs.read_plan, "stats": onnxmbs.read_stats, "blocks": onnxmbs.read_blocks_plan,
        "compact": onnxmbs.read_compact_record}


def mutations(kind: str) -> list[tuple[tuple, object]]:
    """(field path, new value or the string "<missing>") for every field of ``kind`` in the table."""
    out = []
    for path in FIELDS[kind]:
        out += [(path, value) for value in WRONG] + [(path, "<missing>")]
        if path in SAMPLES:
            out += [(path, [SAMPLES[path], value]) for value in (PASSWD, True, -1, None)]
    return out


def mutated(doc: dict, path: tuple, value: object) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path
    holder = doc
    for key in parents:
        holder = holder[key]
    if value == "<missing>":
        del holder[last]
    else:
        holder[last] = value
    return doc


def acceptable(kind: str, doc: dict, path: tuple, value: object) -> bool:
    if value == "<missing>":
        return path in OPTIONAL[kind]
    if (kind, path) == ("stats", ("images",)) and count()(value):  # no count beyond what the images hold
        return all(c <= value * tap["per_image"] for tap in doc["taps"] for c in tap["nonzero"])
    return FIELDS[kind][path](value)


def check(kind: str, doc: dict, path: tuple, value: object, tmp: Path) -> str:
    """Load the mutated file; returns "loaded" or "refused" (asserting what each must look like)."""
    bad = mutated(doc, path, value)
    file = tmp / f"{kind}.json"
    file.write_text(json.dumps(bad))
    try:
        record = READ[kind](file)
    except MBSError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{file}: "), message
        assert field_name(path) in message, (path, value, message)  # a field compared with another: both named
        assert ("is missing" if value == "<missing>" else "found") in message or value in ([], {}), message
        assert "rewrite it with `onnxmbs " in message, message
        return "refused"
    except Exception as exc:  # noqa: BLE001 - the point: nothing but MBSError
        pytest.fail(f"{kind} {field_name(path)} = {value!r}: {type(exc).__name__}: {exc}")
    written = record.to_json()  # what it writes back: the file, or the file without a key set to null
    assert written == bad or (value is None and written == mutated(doc, path, "<missing>")), (path, value)
    return "loaded"


@pytest.mark.parametrize("kind", ["plan", "stats", "blocks", "compact"])
def test_every_mutated_file_loads_faithfully_or_names_the_field(kind, files, tmp_path):
    seen = {}
    for path, value in mutations(kind):
        got = check(kind, files[kind], path, value, tmp_path)
        expected = "loaded" if acceptable(kind, files[kind], path, value) else "refused"
        assert got == expected, f"{kind} {field_name(path)} = {value!r}: {got}, expected {expected}"
        seen[got] = seen.get(got, 0) + 1
    assert seen["refused"] >= 75 and seen["loaded"] >= 3  # the mutations are many, and not all fatal


def test_the_unmutated_files_load_and_write_back_key_for_key(files, tmp_path):
    for kind, doc in files.items():
        (tmp_path / f"{kind}.json").write_text(json.dumps(doc))
        assert READ[kind](tmp_path / f"{kind}.json").to_json() == doc


@pytest.mark.parametrize(("kind", "path", "value", "message"), [
    ("stats", ("data",), -1, "stats file data must be a JSON object, found -1"),
    ("plan", ("layers", 3, "p_nonzero"), PASSWD,
     f'plan layers[3].p_nonzero must be a number in [0, 1], found "{PASSWD}"'),
    ("plan", ("model", "L"), True, "plan model.L must be an integer ≥ 0, found true"),
    ("plan", ("settings", "statistic"), -1, 'plan settings.statistic must be one of "extended", "paper", found -1'),
    ("plan", ("layers", 0, "statistic"), -1, "plan layers[0].statistic must be one of"),
    ("blocks", ("settings", "rescore"), "sometimes", 'blocks plan settings.rescore must be one of "every", "once", "refit"'),
])
def test_the_issues_cases(files, tmp_path, kind, path, value, message):
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(mutated(files[kind], path, value)))
    with pytest.raises(MBSError) as info:
        READ[kind](file)
    assert str(info.value).startswith(f"{file}: {message}")


def test_counts_beyond_what_the_images_hold_are_refused(files, tmp_path):
    doc = mutated(files["stats"], ("taps", 1, "nonzero"), [10**12] * 16)
    file = tmp_path / "s.json"
    file.write_text(json.dumps(doc))
    top = doc["images"] * doc["taps"][1]["per_image"]
    with pytest.raises(MBSError, match=re.escape(f"taps[1].nonzero[0] must be ≤ images × taps[1].per_image = {doc['images']} × "
                                                   f"{doc['taps'][1]['per_image']} = {top}, found {10**12}")):
        onnxmbs.read_stats(file)


def test_a_merged_stats_file_is_a_record_with_its_sources(files, tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(files["stats"]))
    res = CliRunner().invoke(main, ["stats", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                    "-o", str(tmp_path / "m.json")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    merged = onnxmbs.read_stats(tmp_path / "m.json")
    assert merged.images == 2 * files["stats"]["images"]
    assert merged.merged == (str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert list(merged.taps[0].nonzero) == [2 * v for v in files["stats"]["taps"][0]["nonzero"]]


@pytest.mark.parametrize(("kind", "command"), [
    ("stats", ["plan", MODEL, "--stats", "{file}"]),
    ("plan", ["compact", MODEL, "--plan", "{file}", "-o", "{tmp}/c.onnx"]),
])
def test_the_cli_exits_1_with_one_line_and_no_traceback(files, tmp_path, kind, command):
    path, value = {"stats": (("data",), -1), "plan": (("layers", 3, "p_nonzero"), PASSWD)}[kind]
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(mutated(files[kind], path, value)))
    args = [a.format(file=file, tmp=tmp_path) for a in command]
    res = subprocess.run([sys.executable, "-m", "onnxmbs", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error") or field_name(path) in line]
    assert len(errors) == 1 and field_name(path) in errors[0] and str(file) in errors[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "c.onnx").exists()


def test_every_field_of_every_record_read_from_a_file_is_checked():
    from onnxmbs.blocks import document as blocks
    from onnxmbs.compact import record as compact
    from onnxmbs.graph.record import ModelRecord
    from onnxmbs.planning import document as plan
    from onnxmbs.records import unchecked_fields
    from onnxmbs.stats import statsfile, stopping
    from onnxmbs.stats.source import DataSource

    records = [ModelRecord, DataSource, stopping.Convergence, stopping.ConvergenceEntry, stopping.BetaBound,
               plan.PlanDocument, plan.Settings, plan.LayerRecord, plan.MacroblockRecord, plan.GroupRecord,
               plan.Summary, statsfile.StatsFile, statsfile.StatsModel, statsfile.StatsData, statsfile.TapRecord,
               blocks.BlocksPlan, blocks.BlocksSettings, blocks.BlockRecord, blocks.RoundRecord, blocks.Summary,
               compact.CompactRecord, compact.LatencyRecord, compact.KeptGroup, compact.Int8Record,
               compact.DeploymentRow, compact.DeploymentTable]
    assert {r.__name__: unchecked_fields(r) for r in records if unchecked_fields(r)} == {}


def test_no_docstring_numbers_the_stages():
    """The stages are the layout table of docs/design.md; docstrings do not number them."""
    numbered = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "onnxmbs").rglob("*.py")
                for n, line in enumerate(p.read_text().splitlines(), 1)
                if re.search(r"\b[Ss]tages? \d", line)]
    assert numbered == []
