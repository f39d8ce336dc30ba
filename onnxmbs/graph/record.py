"""The record of a model that plans, stats files and blocks plans carry (light: no onnx import)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from onnxmbs.records import Record


@dataclass(frozen=True)
class ModelRecord(Record):
    """The model a plan (or a stats file, or a blocks plan) was made from."""
    path: str | None
    sha256: str
    input: str
    shape: tuple[Any, ...]
    layout: str
    L: int  # noqa: N815
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"shape": tuple, "L": int}

    @property
    def input_hw(self) -> tuple[int, int] | None:
        if len(self.shape) != 4:
            return None
        h, w = (self.shape[2], self.shape[3]) if self.layout == "NCHW" else (self.shape[1], self.shape[2])
        return int(h), int(w)
