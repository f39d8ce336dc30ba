"""tools/ use the library: no second trainer, accuracy function, exporter or session opener there."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"

# What each pattern would mean: a copy of something the package already does, with its one place.
COPIES = {
    r"torch\.optim\.": "an optimizer loop — use onnxmbs.train (train_torch / train_keras)",
    r"\.backward\(\)": "a training step — use onnxmbs.train",
    r"cross_entropy": "a loss of its own — use onnxmbs.train",
    r"torch\.onnx\.export\(": "an exporter — use onnxmbs.zoo.export.export_torch",
    r"tf2onnx\.convert": "an exporter — use onnxmbs.zoo.export.export_keras",
    r"InferenceSession\(": "a session opener — use onnxmbs.runtime.session.open_session",
    r"argmax\((?:1|axis=1|-1)\)\s*==": "an accuracy function — use onnxmbs.evaluate or evaluate_torch",
}


def _tools() -> list[Path]:
    return sorted(p for p in TOOLS.iterdir() if p.suffix in (".py", ".sh"))


def test_the_tools_are_found():
    names = {p.name for p in _tools()}
    assert {"train_digits.py", "prove_reconstruct.py", "model_matrix.py"} <= names


@pytest.mark.parametrize("pattern", sorted(COPIES))
def test_no_tool_carries_its_own_copy(pattern: str):
    found = [f"{p.name}:{i}: {line.strip()}" for p in _tools()
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert found == [], f"{COPIES[pattern]}: {found}"


def test_the_patterns_catch_a_copy():
    """The check above can fail: each pattern matches the kind of line it exists to keep out."""
    samples = {
        r"torch\.optim\.": "opt = torch.optim.SGD(model.parameters(), lr=0.1)",
        r"\.backward\(\)": "loss.backward()",
        r"cross_entropy": "loss = F.cross_entropy(logits, y)",
        r"torch\.onnx\.export\(": "torch.onnx.export(model, (x,), 'm.onnx')",
        r"tf2onnx\.convert": "tf2onnx.convert.from_keras(model)",
        r"InferenceSession\(": "sess = ort.InferenceSession(path)",
        r"argmax\((?:1|axis=1|-1)\)\s*==": "return float((logits.argmax(1) == y).mean())",
    }
    assert set(samples) == set(COPIES)
    for pattern, line in samples.items():
        assert re.search(pattern, line), pattern
