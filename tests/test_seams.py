"""Seams between the packages: one place opens onnxruntime sessions; no import circles."""
from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxmbs"


def test_only_the_runtime_opens_onnxruntime_sessions():
    calls = re.compile(r"\bInferenceSession\s*\(")
    found = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if calls.search(p.read_text())}
    assert found == {"onnxmbs/runtime/session.py"}
