"""Where statistics came from, as the plan records it (light: no onnx or PIL import)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from onnxmbs.data.normalisation import Normalisation
from onnxmbs.records import Record, boolean, checked, integer, number, optional, text


NORMALISATION = checked(Normalisation.from_json, "a normalisation {preset, mean, std, origin}")


@dataclass(frozen=True)
class DataSource(Record):
    """Where the statistics came from: calibration data (with its preprocessing) or a stats file."""
    synthetic: bool
    data: str | None
    skipped: int
    preprocess: str | None
    seconds: float | None = None
    stats_file: str | None = None
    normalisation: Normalisation | None = None  # the decision: preset, mean/std, and where it came from
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"synthetic": boolean, "data": optional(text), "skipped": integer(),
                         "preprocess": optional(text), "seconds": optional(number(low=0)),
                         "stats_file": optional(text), "normalisation": optional(NORMALISATION)}
    OMIT_NONE: ClassVar = frozenset({"seconds", "stats_file", "normalisation"})
