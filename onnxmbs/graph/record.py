"""The record of a model that plans, stats files and blocks plans carry (light: no onnx import)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from onnxmbs.records import Record, choice, integer, items, optional, sha256, text

LAYOUTS = ("NCHW", "NHWC")
INPUT_CONVERT: Mapping[str, Any] = {  # the model's file, hash and image input (a stats file has no L)
    "path": optional(text), "sha256": sha256, "input": text, "shape": items(integer(low=1)),
    "layout": choice(*LAYOUTS)}


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
    NAME: ClassVar = "model"
    CONVERT: ClassVar = {**INPUT_CONVERT, "L": integer()}

    @property
    def input_hw(self) -> tuple[int, int] | None:
        if len(self.shape) != 4:
            return None
        h, w = (self.shape[2], self.shape[3]) if self.layout == "NCHW" else (self.shape[1], self.shape[2])
        return int(h), int(w)
