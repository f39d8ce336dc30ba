"""Option value types shared by the commands: a bad value is a usage error (exit 2) that names it."""
from __future__ import annotations

import math

import click

from onnxmbs.errors import MBSError
from onnxmbs.units import parse_count


class Shape(click.ParamType):
    name = "shape"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            dims = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a shape like 1,3,224,224", param, ctx)
        if len(dims) not in (3, 4) or any(d <= 0 for d in dims):
            self.fail(f"{value!r} must be 3 or 4 positive integers, e.g. 1,3,224,224", param, ctx)
        return dims


class Floats(click.ParamType):
    """A comma-separated list of numbers, each within [low, high] (``positive``: > 0)."""
    name = "floats"

    def __init__(self, *, low: float | None = None, high: float | None = None, positive: bool = False) -> None:
        self.low, self.high, self.positive = low, high, positive

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            values = tuple(float(v) for v in value.split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not values:
            self.fail(f"{value!r} holds no numbers", param, ctx)
        bad = [v for v in values if not math.isfinite(v) or (self.positive and v <= 0)
               or (self.low is not None and v < self.low) or (self.high is not None and v > self.high)]
        if bad:
            self.fail(f"{value!r}: {bad[0]:g} is not {self.describe()}", param, ctx)
        return values

    def describe(self) -> str:
        if self.positive:
            return "a positive number"
        return f"in [{self.low:g}, {self.high:g}]" if self.low is not None and self.high is not None else "finite"


class KValues(click.ParamType):
    """k values for a sweep: start:stop:step (stop included) or a list 0.5,1,2."""
    name = "k-range"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from onnxmbs.planning.sweep import parse_ks
        try:
            return parse_ks(value)
        except MBSError as exc:
            self.fail(str(exc).replace(f"--k {value!r} ", f"{value!r} "), param, ctx)


positive_float = click.FloatRange(min=0, min_open=True)


class Count(click.ParamType):
    """A positive count: 272474, 272_474, 2.5e5, 250k, 1.5M, 4G."""
    name = "count"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        number = parse_count(value)
        if number is None:
            self.fail(f"{value!r} is not a count like 250000, 250k, 1.5M or 4G", param, ctx)
        if number <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return number


class RoundTo(click.ParamType):
    """``--round-to N`` (N >= 1) or ``auto`` (the rounding measured fastest: onnxmbs.compact.rounding)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).lower() == "auto":
            return value if isinstance(value, int) else "auto"
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is neither a whole number >= 1 nor 'auto'", param, ctx)
        return number


class OutputFile(click.ParamType):
    """A report file (``-o``) whose suffix names its format in :mod:`onnxmbs.reports.formats`; any other
    suffix is a bad option value (exit 2) naming the ones there are."""
    name = "file"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def convert(self, value, param, ctx):
        from onnxmbs.reports.formats import format_of

        try:
            format_of(value, kind=self.kind)
        except MBSError as exc:
            self.fail(str(exc), param, ctx)
        return value
