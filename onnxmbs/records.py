"""Typed records that are also JSON documents: the contract between stages.

A :class:`Record` subclass is a frozen dataclass whose fields are its JSON keys, in
order; ``from_json`` converts and checks them, ``to_json`` writes them back key for key.
Keys a newer onnxmbs adds are kept in the ``extra`` field and written back unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import MISSING, fields
from typing import Any, ClassVar


def plain(value: Any) -> Any:
    """A record, tuple or scalar as plain JSON values."""
    if isinstance(value, Record) or callable(getattr(value, "to_json", None)):
        return value.to_json()
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def ints(value: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def strs(value: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def optional(convert):
    return lambda value: None if value is None else convert(value)


class Record:
    """A frozen record whose fields are its JSON keys, in order; ``extra`` keeps unknown keys."""

    CONVERT: ClassVar[Mapping[str, Any]] = {}  # field -> converter from JSON
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()  # fields left out of the JSON when None
    OMIT_DEFAULT: ClassVar[frozenset[str]] = frozenset()  # fields left out when at their default (older files)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__} must be a JSON object, not {type(data).__name__}")
        known = [f for f in fields(cls) if f.name != "extra"]
        values = {}
        for f in known:
            if f.name in data:
                value = data[f.name]
                values[f.name] = cls.CONVERT.get(f.name, lambda v: v)(value)
            elif f.name not in cls.OMIT_NONE and f.default is MISSING and f.default_factory is MISSING:
                raise KeyError(f"{cls.__name__.lower()} has no {f.name!r}")  # a field with a default is optional
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


