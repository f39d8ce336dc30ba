"""The package layout is the pipeline: a lower stage never imports a higher one.

Stages, in the order data flows (rank): base modules (errors, files, units, progress, records, runtime, ops) 0,
data (a user's images) and graph 1, stats 2, planning 3, compact/blocks/workflow 4, adapters 5, train 6, zoo/handbook 7, reports 8,
cli 9. Every import — module-level or lazy inside a function — is checked.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnxmbs"
RANK = {"errors": 0, "files": 0, "units": 0, "progress": 0, "records": 0, "runtime": 0, "ops": 0, "data": 1, "graph": 1, "stats": 2,
        "planning": 3,
        "compact": 4, "workflow": 4,  # workflow: the one analyse -> measure -> plan sequence (--round-to auto times
                                      # compact models)
        "blocks": 4, "adapters": 5, "train": 6,
        "zoo": 7, "handbook": 7,  # handbook: builds zoo models and trains them; reports render it
        "reports": 8, "cli": 9}


def _stage(module: str) -> str:
    return module.split(".")[1]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onnxmbs") and node.level == 0:
            out.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("onnxmbs")]
    return out


def test_every_module_belongs_to_a_stage():
    stray = [m for m in _modules() if m != "onnxmbs" and m != "onnxmbs.__main__" and _stage(m) not in RANK]
    assert stray == [], f"modules outside the pipeline's stages: {stray}"


def test_no_stage_imports_a_later_stage():
    wrong = []
    for module, path in _modules().items():
        if module in ("onnxmbs", "onnxmbs.__main__"):
            continue
        for target, line in _imports(path):
            if target == "onnxmbs":
                continue
            if RANK[_stage(target)] > RANK[_stage(module)]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert wrong == []


def test_no_module_is_huge():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 450} == {}


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_onnxmbs_is_light():
    res = _fresh("import sys, onnxmbs; onnxmbs.MBSError; "
                 "print(sorted(m for m in ('onnx', 'onnxruntime', 'PIL', 'torch', 'tensorflow', 'numpy') "
                 "if m in sys.modules))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_cli_help_imports_no_heavy_module():
    res = _fresh("import sys\nfrom click.testing import CliRunner\nfrom onnxmbs.cli import main\n"
                 "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
                 "print(sorted(m for m in ('onnx', 'onnxruntime', 'PIL', 'torch', 'tensorflow', 'numpy') if m in sys.modules))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("onnxmbs.cli") and m != "onnxmbs.cli.__main__"))
def test_each_cli_module_imports_on_its_own(module):
    res = _fresh(f"import {module}")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("args", [["-m", "onnxmbs", "--help"], ["-m", "onnxmbs.cli", "--help"]])
def test_python_dash_m(args):
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout and "plan" in res.stdout
