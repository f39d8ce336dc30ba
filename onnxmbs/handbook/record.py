"""The handbook document (schema ``onnxmbs.handbook/1``) and its table: mean ± std per k, paired differences.

``Handbook.rows()`` aggregates the runs: accuracy mean ± sample std over seeds for MBS,
uniform scaling and the original model, and per k the paired difference MBS − uniform
(same seed) with a two-sided 95 % confidence interval from the t distribution.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from onnxmbs.data.normalisation import Normalisation
from onnxmbs.errors import MBSError
from onnxmbs.files import read_document
from onnxmbs.records import Record, ints, optional

SCHEMA = "onnxmbs.handbook/1"
VARIANTS = ("original", "mbs", "uniform")


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def _widths(value: Any) -> tuple[tuple[int, ...], ...]:
    return tuple(ints(v) for v in value)


@dataclass(frozen=True)
class Point(Record):
    """One k: the plan's RF boundary, β and compact widths per macroblock, predicted params and MACs,
    and the uniform α matched to that parameter budget (``uniform_step``: one α step's params)."""
    k: float
    rf_boundary: int | None
    beta: tuple[float, ...]
    configuration: tuple[tuple[int, ...], ...]
    params: int
    flops: int
    alpha: float | None = None
    uniform_params: int | None = None
    uniform_flops: int | None = None
    uniform_step: int | None = None
    round_to: int | None = None  # under --round-to auto: the rounding measured fastest at this k
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"beta": _floats, "configuration": _widths, "k": float}
    OMIT_NONE: ClassVar = frozenset({"alpha", "uniform_params", "uniform_flops", "uniform_step", "round_to"})


def run_key(variant: str, k: float | None, seed: int) -> str:
    """The file name stem of one training run, e.g. ``mbs_k0.6_s3``."""
    return f"{variant}_s{seed}" if k is None else f"{variant}_k{k:g}_s{seed}"


@dataclass(frozen=True)
class Run(Record):
    """One finished training: what was trained, its parameters (counted on the trained model) and accuracy."""
    variant: str  # original | mbs | uniform
    k: float | None
    seed: int
    alpha: float | None
    params: int
    accuracy: float  # held-out top-1
    seconds: float
    epochs: int
    score: float | None = None  # the settings' user metric on the held-out data (None: top-1 is the score)
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"k": optional(float), "alpha": optional(float), "params": int, "seed": int,
                         "score": optional(float)}
    OMIT_NONE: ClassVar = frozenset({"score"})

    @property
    def value(self) -> float:
        """What the handbook compares: the user metric's score when there is one, else top-1."""
        return self.accuracy if self.score is None else self.score

    @property
    def key(self) -> str:
        return run_key(self.variant, self.k, self.seed)


@dataclass(frozen=True)
class Settings(Record):
    """What was trained, on what, how; ``fingerprint`` fields decide whether saved runs can be reused."""
    model: str
    sha256: str
    source: str  # "zoo:NAME" or the user's model spec
    framework: str
    init: str
    train: Mapping[str, Any]  # TrainConfig fields except the seed
    train_data: str
    val_data: str
    calibration: str | None
    preprocess: str | None
    images: int
    round_to: int | str  # or "auto" (each point keeps its own rounding)
    ks: tuple[float, ...]
    seeds: int
    uniform: bool
    original: bool
    normalisation: Normalisation | None = None  # how calibration and training images were normalised
    metric: str | None = None  # python:FILE.py:FUNCTION scoring the held-out data (None: top-1)
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"ks": _floats, "train": dict, "normalisation": optional(Normalisation.from_json),
                         "metric": optional(str)}
    OMIT_NONE: ClassVar = frozenset({"normalisation", "metric"})
    RESUMABLE: ClassVar = frozenset({"ks", "seeds", "uniform", "original", "model", "train_data", "val_data",
                                     "calibration", "extra"})

    def fingerprint(self) -> dict[str, Any]:
        """The settings a saved run depends on (ks, seeds, and which variants run may change on resume)."""
        return {k: v for k, v in self.to_json().items() if k not in self.RESUMABLE}


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and count of some accuracies (std 0 for one value)."""
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def _t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    for i in range(1 + df % 2, df - 1, 2):  # odd df: 2/3 c², 2·4/(3·5) c⁴ …; even df: 1/2 c², 1·3/(2·4) c⁴ …
        term *= c2 * i / (i + 1)
        total += term
    if df % 2 == 0:
        return math.sin(theta) * total
    return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| < t) = ``confidence`` (two-sided), by bisection: 4.303 for 95 % and df = 2."""
    lo, hi = 0.0, 1e4
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_within(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Paired:
    """Mean of paired differences (same seed) with its two-sided 95 % t confidence interval."""
    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, diffs: Sequence[float]) -> Paired | None:
        if len(diffs) < 2:
            return None
        mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        half = t_quantile(0.95, len(diffs) - 1) * sd / math.sqrt(len(diffs))
        return cls(mean, mean - half, mean + half, len(diffs))


@dataclass(frozen=True)
class Row:
    """One line of the handbook table."""
    point: Point
    mbs: Stat | None
    uniform: Stat | None
    difference: Paired | None
    mbs_params: tuple[int, ...]  # distinct parameter counts of the trained MBS models
    uniform_params: tuple[int, ...]


@dataclass(frozen=True)
class Handbook(Record):
    schema: str
    settings: Settings
    params: int  # the original model (plan's count)
    flops: int
    points: tuple[Point, ...]
    runs: tuple[Run, ...]
    seconds: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"settings": Settings.from_json, "points": lambda v: tuple(Point.from_json(p) for p in v),
                         "runs": lambda v: tuple(Run.from_json(r) for r in v)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Handbook:
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise MBSError(f"not an onnxmbs handbook (schema {SCHEMA!r} expected) — pass the JSON written by "
                           "`onnxmbs handbook -o FILE.json`")
        try:
            return super().from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise MBSError(f"the handbook is malformed ({type(exc).__name__}: {exc}) — write it again with "
                           "`onnxmbs handbook`") from None

    def accuracies(self, variant: str, k: float | None = None) -> dict[int, float]:
        """Seed -> score of ``variant`` at ``k`` (top-1, or the settings' metric)."""
        return {r.seed: r.value for r in self.runs if r.variant == variant and r.k == k}

    def original(self) -> Stat | None:
        return Stat.of(list(self.accuracies("original").values()))

    def rows(self) -> tuple[Row, ...]:
        out = []
        for p in self.points:
            mbs, uni = self.accuracies("mbs", p.k), self.accuracies("uniform", p.k)
            out.append(Row(point=p, mbs=Stat.of(list(mbs.values())), uniform=Stat.of(list(uni.values())),
                           difference=Paired.of(self._differences(p.k)), mbs_params=self._params("mbs", p.k),
                           uniform_params=self._params("uniform", p.k)))
        return tuple(out)

    def pooled(self) -> Paired | None:
        """MBS − uniform over every (k, seed) pair of the sweep: the Figure 5 question asked once, with
        more pairs than one k has (the pairs are separate trainings, so they are independent)."""
        if len(self.points) < 2:
            return None
        return Paired.of([d for p in self.points for d in self._differences(p.k)])

    def _differences(self, k: float) -> list[float]:
        """MBS − uniform accuracy at ``k`` for every seed both have, in seed order."""
        mbs, uni = self.accuracies("mbs", k), self.accuracies("uniform", k)
        return [mbs[s] - uni[s] for s in sorted(mbs) if s in uni]

    def _params(self, variant: str, k: float) -> tuple[int, ...]:
        return tuple(sorted({r.params for r in self.runs if r.variant == variant and r.k == k}))


def read_handbook(path: str | Path) -> Handbook:
    """A handbook JSON written by ``onnxmbs handbook -o FILE.json``."""
    how = "pass the JSON written by `onnxmbs handbook -o FILE.json`"
    return Handbook.from_json(read_document(path, schema=SCHEMA, what="onnxmbs handbook", how=how))
