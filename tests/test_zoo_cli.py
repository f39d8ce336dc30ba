"""`zoo list` is a table; Keras/TensorFlow load without their start-up noise."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxmbs.cli import main
from onnxmbs.zoo import ZOO

ROOT = Path(__file__).resolve().parents[1]


def test_zoo_list_has_a_header_and_aligned_columns():
    lines = CliRunner().invoke(main, ["zoo", "list"]).output.splitlines()
    assert lines[0].split()[:3] == ["model", "frameworks", "default"] and set(lines[1]) <= {"-", " "}
    rows = lines[2:]
    assert len(rows) == len(ZOO)
    starts = {row.index(" --") for row in rows}  # the configuration column starts at one place
    assert len(starts) == 1
    names = [row.split()[0] for row in rows]
    assert names.index("resnet20") < names.index("resnet110") < names.index("resnet1202")


@pytest.mark.slow
def test_keras_imports_without_tensorflow_noise():
    pytest.importorskip("tensorflow")
    code = "from onnxmbs.runtime.frameworks import import_keras; k = import_keras(); print(k.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "keras"
    assert done.stderr == ""  # TensorFlow 2.x printed oneDNN/absl lines here
