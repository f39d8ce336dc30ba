"""How a ``--until-converged`` statistics pass ended, as the stats file and the plan record it
(light: no onnx, numpy or PIL import). The monitor that decides is
:class:`onnxmbs.planning.convergence.ConvergenceMonitor`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from onnxmbs.records import Record, boolean, integer, items, number, optional, text


@dataclass(frozen=True)
class BetaBound(Record):
    """β of one macroblock and its bound (two batch-means standard errors)."""
    index: int
    beta: float
    bound: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"index": integer(), "beta": number(low=0, high=1, as_float=True),
                         "bound": number(low=0, as_float=True)}


@dataclass(frozen=True)
class ConvergenceEntry(Record):
    """β ± bound per macroblock at one monitored threshold (k, or z in pixels)."""
    k: float | None
    z: float
    macroblocks: tuple[BetaBound, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"k": optional(number(low=0, as_float=True)), "z": number(low=0, as_float=True),
                         "macroblocks": items(BetaBound.from_json)}


@dataclass(frozen=True)
class Convergence(Record):
    """Images read, whether the plan had converged, the tolerance and checkpoints, β ± bound."""
    images: int
    converged: bool
    tolerance: float
    checkpoint: int
    checkpoints: int
    entries: tuple[ConvergenceEntry, ...] = ()
    reason: str | None = None  # why the pass ended without converging (None when it converged)
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"images": integer(), "converged": boolean, "tolerance": number(low=0, as_float=True),
                         "checkpoint": integer(low=1), "checkpoints": integer(),
                         "entries": items(ConvergenceEntry.from_json), "reason": optional(text)}
    OMIT_NONE: ClassVar = frozenset({"reason"})

    def at(self, z: float) -> ConvergenceEntry | None:
        """The entry monitored at threshold ``z`` (pixels), if any."""
        return next((e for e in self.entries if abs(e.z - float(z)) < 1e-9), None)

    def for_plan(self, z: float) -> Convergence:
        """The record a plan at threshold ``z`` keeps: only that threshold's entry (none if not monitored)."""
        entry = self.at(z)
        return replace(self, entries=(entry,) if entry else ())
