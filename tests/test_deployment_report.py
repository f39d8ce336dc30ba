"""``report --deployment COMPACT.onnx``: original, compact and compact INT8 side by side, the numbers
checked against the files themselves (sizes on disk, parameters counted from the initializers) and
against the records ``onnxmbs compact`` wrote; placed in the section of the model it came from."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxmbs.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_digits.onnx"
NPZ = ROOT / "models" / "digits_calib.npz"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def initializer_params(path: Path) -> int:
    """Weights and biases of the convs and the classifier (BatchNorm is folded in this model)."""
    graph = onnx.load(str(path)).graph
    read = {name for n in graph.node if n.op_type in ("Conv", "Gemm") for name in n.input[1:]}
    return sum(int(np.prod(t.dims)) for t in graph.initializer if t.name in read)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    model, calib, plan = MODEL, NPZ, tmp / "plan.json"
    assert run("plan", model, "--data", calib, "--max-images", 64, "--k", 1.0, "-o", plan).exit_code == 0
    out = tmp / "c.onnx"
    res = run("compact", model, "--plan", plan, "-o", out, "--data", calib, "--max-images", 32, "--quantize", "int8",
              "--repeats", "2")
    assert res.exit_code == 0, res.output
    plain = tmp / "p.onnx"  # no --quantize: a table of original and compact only
    assert run("compact", model, "--plan", plan, "-o", plain, "--repeats", "2").exit_code == 0
    return {"model": model, "calib": calib, "compact": out, "plain": plain, "tmp": tmp}


def test_the_table_holds_what_the_files_and_records_say(made):
    from onnxmbs.compact.record import read_deployment

    dep = read_deployment(made["compact"])
    rows = {r.variant: r for r in dep.rows}
    assert list(rows) == ["original", "compact", "int8"]
    assert rows["original"].bytes == made["model"].stat().st_size
    assert rows["compact"].bytes == made["compact"].stat().st_size
    assert rows["int8"].bytes == (made["tmp"] / "c.int8.onnx").stat().st_size
    assert rows["original"].params == initializer_params(made["model"])
    assert rows["compact"].params == rows["int8"].params == initializer_params(made["compact"])
    assert rows["compact"].params < rows["original"].params and rows["compact"].flops < rows["original"].flops
    latency = json.loads((made["tmp"] / "c.int8.onnx.json").read_text())["latency"]
    assert [rows[v].latency_ms for v in rows] == [latency[f"{v}_ms"] for v in rows]  # one run, all three
    fid = json.loads((made["tmp"] / "c.int8.onnx.json").read_text())["fidelity"]
    assert dep.quality == "fidelity" and rows["int8"].relative_l2 == fid["int8"]["outputs"][0]["relative_l2"]
    assert dep.sha256 and dep.model == str(made["model"])
    two = read_deployment(made["plain"])
    assert [r.variant for r in two.rows] == ["original", "compact"] and two.quality is None
    assert two.rows[1].bytes == made["plain"].stat().st_size


def test_report_shows_it_in_the_model_section_in_every_format(made):
    outs = [made["tmp"] / f"r.{s}" for s in ("json", "md", "html")]
    res = run("report", made["model"], "--synthetic", 8, "--deployment", made["compact"],
              *[a for o in outs for a in ("-o", o)])
    assert res.exit_code == 0, res.output
    doc = json.loads(outs[0].read_text())
    (dep,) = doc["deployments"]
    assert [r["variant"] for r in dep["rows"]] == ["original", "compact", "int8"]
    assert dep["sha256"] == doc["models"][0]["sha256"]
    md = outs[1].read_text()
    model_section = md.index(f"## {made['model']}")
    assert md.index("### Deployment: ") > model_section  # inside the model's section, one level down
    assert "compact INT8" in md and "rel. L2 to original" in md
    html = outs[2].read_text()
    assert "<h3>Deployment: " in html and "compact INT8" in html
    assert "compact INT8" in res.output  # the terminal summary too


def test_a_file_without_its_record_is_one_line(made):
    lone = made["tmp"] / "lone.onnx"
    lone.write_bytes(b"not read: its record is missing")
    res = run("report", made["model"], "--synthetic", 4, "--deployment", lone, "-o", made["tmp"] / "x.json")
    assert res.exit_code == 1 and "no compact record" in res.output and "Traceback" not in res.output
    assert not (made["tmp"] / "x.json").exists()


def test_a_damaged_int8_record_names_its_field(made, tmp_path):
    import shutil

    for name in ("c.onnx", "c.onnx.json", "c.int8.onnx.json"):
        shutil.copy(made["tmp"] / name, tmp_path / name)
    doc = json.loads((tmp_path / "c.int8.onnx.json").read_text())
    doc["bytes"]["int8"] = "big"
    (tmp_path / "c.int8.onnx.json").write_text(json.dumps(doc))
    res = run("report", made["model"], "--synthetic", 4, "--deployment", tmp_path / "c.onnx", "-o", tmp_path / "r.json")
    assert res.exit_code == 1 and "bytes.int8" in res.output and "c.int8.onnx.json" in res.output
    assert "Traceback" not in res.output
