"""``--round-to auto``: the channel rounding whose compact model is measured fastest on this machine.

For the plan's β, the compact model is built at each rounding of :data:`ROUNDINGS` (the widths
⌈β·C⌉ rounded up to a multiple of r) and timed with onnxruntime (the provider's CPU kernels, the
given batch and threads, the median of repeated runs after a warm-up, all candidates and the
original taking turns in one run). The fastest wins; a candidate within :data:`TIE` (3 %) of the
fastest counts as a tie, and among ties the one with fewer parameters wins. The plan keeps the
chosen rounding as ``settings.round_to`` (an integer, as every consumer of plans expects) and the
whole table under ``rounding``, so the choice can be checked.

:class:`onnxmbs.workflow.sequence.Study` asks for the choice once per k (plan, sweep, report, check,
handbook all plan through it). The timer is injectable (``timer(models) -> latencies``) so the choice is tested without timing.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxmbs.compact.check import median_latencies
from onnxmbs.errors import MBSError
from onnxmbs.graph.analysis import Analysis

logger = logging.getLogger(__name__)

ROUNDINGS = (1, 2, 4, 8, 16)
TIE = 0.03  # latencies within 3 % of the fastest are a tie (the run-to-run noise of a quiet machine)

Timer = Callable[[Sequence[bytes]], Sequence[float]]  # serialized models -> latency (ms) each


@dataclass(frozen=True)
class RoundingRow:
    round_to: int
    params: int
    flops: int
    latency_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"round_to": self.round_to, "params": self.params, "flops": self.flops,
                "latency_ms": round(self.latency_ms, 4)}


@dataclass(frozen=True)
class RoundingChoice:
    """The measured table and the rounding chosen from it."""

    chosen: int
    original_ms: float
    rows: tuple[RoundingRow, ...]
    batch: int
    threads: int
    repeats: int

    def to_json(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "original_ms": round(self.original_ms, 4), "batch": self.batch,
                "threads": self.threads, "repeats": self.repeats, "tie": TIE,
                "candidates": [r.to_json() for r in self.rows]}


def pick(rows: Sequence[RoundingRow]) -> RoundingRow:
    """The fastest row; within :data:`TIE` of it, the fewest parameters (then the smaller rounding)."""
    if not rows:
        raise MBSError("no rounding to choose from")
    fastest = min(r.latency_ms for r in rows)
    ties = [r for r in rows if r.latency_ms <= fastest * (1 + TIE)]
    return min(ties, key=lambda r: (r.params, r.round_to))


def choose_rounding(analysis: Analysis, statistics: Any, *, k: float | None = None, z: float | None = None,
                    roundings: Sequence[int] = ROUNDINGS, batch: int | None = None, threads: int = 1,
                    repeats: int = 20, timer: Timer | None = None) -> RoundingChoice:
    """Plan at each rounding, build each compact model (inherited weights), time them with the original."""
    from onnxmbs.compact.writer import compact_model
    from onnxmbs.planning.build import plan_from_statistics

    loaded = analysis.loaded
    batch = batch or loaded.input.shape[0]
    source = loaded.path if loaded.path and Path(str(loaded.path)).is_file() else loaded.model
    built: dict[tuple, Any] = {}  # compact widths -> the compact model (roundings that agree are built once)
    widths_of = {}
    for r in roundings:
        doc = plan_from_statistics(analysis, statistics, k=k, z=z, round_to=r).document
        key = tuple(sorted((g.id, g.compact_channels) for g in doc.groups))
        widths_of[r] = key
        if key not in built:
            built[key] = compact_model(source, doc, input_shape=tuple(loaded.input.shape), force=True)
    models = [loaded.model.SerializeToString(), *(res.model.SerializeToString() for res in built.values())]
    timer = timer or (lambda ms: median_latencies(ms, loaded.input, batch=batch, repeats=repeats, threads=threads))
    original_ms, *times = timer(models)
    latency = dict(zip(built, times))
    rows = tuple(RoundingRow(r, built[widths_of[r]].params_compact, built[widths_of[r]].flops_compact,
                             latency[widths_of[r]]) for r in roundings)
    chosen = pick(rows)
    if chosen.latency_ms > original_ms * (1 + TIE):
        logger.warning("round-to auto: no rounding made the compact model faster than the original here (best %d: "
                       "%.3f ms vs %.3f ms) — its kernels do not gain from these widths; a lower k cuts more",
                       chosen.round_to, chosen.latency_ms, original_ms)
    logger.info("round-to auto: %s -> %d", ", ".join(f"{r.round_to}: {r.latency_ms:.3f} ms" for r in rows),
                chosen.round_to)
    return RoundingChoice(chosen.round_to, original_ms, rows, batch, threads, repeats)
