"""Where statistics came from, as the plan records it (light: no onnx or PIL import)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from onnxmbs.records import Record


@dataclass(frozen=True)
class DataSource(Record):
    """Where the statistics came from: calibration data (with its preprocessing) or a stats file."""
    synthetic: bool
    data: str | None
    skipped: int
    preprocess: str | None
    seconds: float | None = None
    stats_file: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    OMIT_NONE: ClassVar = frozenset({"seconds", "stats_file"})
