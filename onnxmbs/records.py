"""Typed records that are also JSON documents: the contract between stages.

A :class:`Record` subclass is a frozen dataclass whose fields are its JSON keys, in
order; ``from_json`` converts and checks them, ``to_json`` writes them back key for key.
Keys a newer onnxmbs adds are kept in the ``extra`` field and written back unchanged.

Field checks live here, in one place: the converters below (:func:`integer`, :func:`number`,
:func:`boolean`, :func:`text`, :func:`choice`, :func:`items`, ...) check the type and range of one
value and raise :class:`FieldError`; ``from_json`` adds the field's path to it
(``plan layers[3].p_nonzero must be a number in [0, 1], found "../../etc/passwd"``) and a reader
turns it into one line that names the file (:func:`damaged`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, ClassVar

from onnxmbs.errors import MBSError

Convert = Callable[[Any], Any]


class FieldError(MBSError, ValueError):
    """An MBSError that names the field at fault: missing, or of the wrong type or range.

    ``refs`` names the other fields a check compares with (``{"channels": ("channels",)}``, relative to
    the record that raised it); ``{channels}`` in ``problem`` is written as that field's full path.
    Also a ValueError, so that code which skips damaged records (``except ValueError``) still does."""

    def __init__(self, problem: str, *, path: tuple[str | int, ...] = (), record: str = "",
                 refs: Mapping[str, tuple[str | int, ...]] | None = None, found: str | None = None) -> None:
        self.problem, self.path, self.record, self.refs, self.found = problem, path, record, dict(refs or {}), found
        super().__init__(str(self))

    def within(self, key: str | int, *, record: str = "") -> FieldError:
        """The same error one level up: ``key`` is the field (or list index) that holds the bad value."""
        return FieldError(self.problem, path=(key, *self.path), record=record or self.record,
                          refs={name: (key, *ref) for name, ref in self.refs.items()}, found=self.found)

    @property
    def field(self) -> str:
        return field_path(self.path)

    def __str__(self) -> str:
        problem = self.problem
        for name, ref in self.refs.items():
            problem = problem.replace("{" + name + "}", field_path(ref))
        if self.found is not None:
            problem += f", found {self.found}"
        return " ".join(part for part in (self.record, self.field, problem) if part)


def field_path(path: tuple[str | int, ...]) -> str:
    """``("layers", 3, "p_nonzero")`` as ``layers[3].p_nonzero``."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def damaged(exc: FieldError, *, path: str | Path | None, how: str) -> MBSError:
    """The one line a reader gives for a bad field: the file, the field, expected vs found, the fix
    (a document given as a dict, without ``path``: "the plan is malformed: ...")."""
    if path is None:
        return MBSError(f"the {exc.record or 'document'} is malformed: {exc} — {how}")
    return MBSError(f"{path}: {exc}; the file is damaged or was not written by onnxmbs — {how}")


def shown(value: Any) -> str:
    """A value as the JSON it was read from, cut short."""
    try:
        out = json.dumps(value)
    except (TypeError, ValueError):
        out = repr(value)
    return out if len(out) <= 40 else out[:39] + "…"


def wrong(expected: str, value: Any, *, path: tuple[str | int, ...] = (), record: str = "",
          refs: Mapping[str, tuple[str | int, ...]] | None = None) -> FieldError:
    """The error of a value that is not what ``expected`` says (at ``path``, when known); ``{name}`` in
    ``expected`` is the path of the field ``refs[name]`` it is compared with."""
    return FieldError(f"must be {expected}", path=path, record=record, refs=refs, found=shown(value))


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    return f" ≥ {low:g}" if low is not None else f" ≤ {high:g}" if high is not None else ""


def _within(value: float, low: float | None, high: float | None) -> bool:
    return not ((low is not None and not value >= low) or (high is not None and not value <= high))


def integer(*, low: int | None = 0, high: int | None = None) -> Convert:
    """An int (never a bool: ``true`` is no count) in [low, high]; by default ≥ 0."""
    expected = f"an integer{_range(low, high)}"

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not _within(value, low, high):
            raise wrong(expected, value)
        return value
    return convert


def number(*, low: float | None = None, high: float | None = None, as_float: bool = False) -> Convert:
    """An int or float (never a bool) in [low, high] (NaN only when unbounded); ``as_float``: made a float."""
    expected = f"a number{_range(low, high)}"

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _within(value, low, high):
            raise wrong(expected, value)
        return float(value) if as_float else value
    return convert


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise wrong("true or false", value)
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise wrong("a string", value)
    return value


def choice(*options: str) -> Convert:
    expected = "one of " + ", ".join(json.dumps(o) for o in options)

    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise wrong(expected, value)
        return value
    return convert


def sha256(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise wrong("a sha256 (64 hex digits)", value)
    return value


def optional(convert: Convert) -> Convert:
    """``convert``, or None (null)."""
    return lambda value: None if value is None else convert(value)


def items(convert: Convert, *, length: int | None = None) -> Convert:
    """A JSON list as a tuple, each item converted (a bad one is named by its index)."""
    expected = f"a list of {length}" if length is not None else "a list"

    def convert_all(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            raise wrong(expected, value)
        out = []
        for i, item in enumerate(value):
            try:
                out.append(convert(item))
            except FieldError as exc:
                raise exc.within(i) from None
        return tuple(out)
    return convert_all


def mapping(convert: Convert) -> Convert:
    """A JSON object as a dict, each value converted (a bad one is named by its key)."""
    def convert_all(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise wrong("a JSON object", value)
        out = {}
        for key, item in value.items():
            try:
                out[str(key)] = convert(item)
            except FieldError as exc:
                raise exc.within(str(key)) from None
        return out
    return convert_all


def json_object(value: Any) -> dict[str, Any]:
    """Any JSON object, kept as it is."""
    return mapping(lambda v: v)(value)


def checked(read: Callable[[Any], Any], expected: str) -> Convert:
    """``read`` (a reader that raises MBSError on bad input), its error as a FieldError naming ``expected``."""
    def convert(value: Any) -> Any:
        try:
            return read(value)
        except FieldError:
            raise
        except MBSError:
            raise wrong(expected, value) from None
    return convert


def plain(value: Any) -> Any:
    """A record, tuple or scalar as plain JSON values."""
    if isinstance(value, Record) or callable(getattr(value, "to_json", None)):
        return value.to_json()
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def ints(value: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


class Record:
    """A frozen record whose fields are its JSON keys, in order; ``extra`` keeps unknown keys."""

    NAME: ClassVar[str] = ""  # how errors call it ("plan", "stats file"); default: the class name
    CONVERT: ClassVar[Mapping[str, Any]] = {}  # field -> converter from JSON (checks type and range)
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()  # fields left out of the JSON when None
    OMIT_DEFAULT: ClassVar[frozenset[str]] = frozenset()  # fields left out when at their default (older files)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]):
        """The record of ``data``; FieldError (an MBSError) names a missing or bad field by its path."""
        name = cls.NAME or cls.__name__.lower()
        if not isinstance(data, Mapping):
            raise FieldError(f"must be a JSON object, found {shown(data)}", record=name)
        known = [f for f in fields(cls) if f.name != "extra"]
        values = {}
        for f in known:
            if f.name in data:
                try:
                    values[f.name] = cls.CONVERT.get(f.name, lambda v: v)(data[f.name])
                except FieldError as exc:
                    raise exc.within(f.name, record=name) from None
            elif f.name not in cls.OMIT_NONE and f.default is MISSING and f.default_factory is MISSING:
                raise FieldError("is missing", path=(f.name,), record=name)  # a field with a default is optional
        names = {f.name for f in known}
        return cls(**values, extra={k: v for k, v in data.items() if k not in names})

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in self.OMIT_NONE) or self.omitted(f, value):
                continue
            out[f.name] = plain(value)
        out.update(getattr(self, "extra", {}))
        return out

    def omitted(self, f: Any, value: Any) -> bool:
        """A field a file written before it existed did not have, still at its default: not written."""
        return f.name in self.OMIT_DEFAULT and f.default is not MISSING and value == f.default


def unchecked_fields(record: type[Record]) -> list[str]:
    """The fields of ``record`` that no converter checks (empty for every record a reader reads)."""
    return [f.name for f in fields(record) if f.name != "extra" and f.name not in record.CONVERT]
