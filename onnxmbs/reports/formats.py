"""The one registry of output writers: a file's suffix names its format, each kind of document has a
writer per format.

``onnxmbs report -o``, ``onnxmbs handbook -o`` and :func:`write_output` (a blocks plan as a page or
a table) all choose here; an unknown suffix is one line naming the ones there are (exit 2 from ``-o``:
:class:`onnxmbs.cli.options.OutputFile`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from onnxmbs.errors import MBSError
from onnxmbs.files import write_atomic

#: suffix -> format
FORMATS: Mapping[str, str] = {".json": "json", ".csv": "csv", ".md": "markdown", ".markdown": "markdown",
                              ".html": "html", ".htm": "html"}
KINDS = ("report", "handbook", "blocks")


def writers(kind: str) -> Mapping[str, Callable[[Any], str]]:
    """Format -> writer for ``kind`` (the renderers are imported when asked for: they import this module)."""
    from onnxmbs.reports import blocks, handbook, report

    table = {"report": report, "handbook": handbook, "blocks": blocks}
    if kind not in table:
        raise MBSError(f"no writers for {kind!r} — choose one of {', '.join(KINDS)}")
    module = table[kind]
    return {"json": module.to_json, "csv": module.to_csv, "markdown": module.to_markdown, "html": module.to_html}


def format_of(path: str | Path, *, kind: str = "report") -> str:
    """The format ``path``'s suffix names; anything else is one line naming the suffixes there are."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise MBSError(f"cannot tell the {kind} format of {str(path)!r} — end it in {', '.join(sorted(FORMATS))}")
    return fmt


def check_outputs(paths: Iterable[str | Path], *, kind: str = "report") -> None:
    for path in paths:
        format_of(path, kind=kind)


def write_output(kind: str, document: Any, path: str | Path) -> Path:
    """Write ``document`` (a report, a handbook or a blocks plan) to ``path`` in its suffix's format, atomically."""
    return write_atomic(path, writers(kind)[format_of(path, kind=kind)](document))


def write_report(report: Any, path: str | Path) -> Path:
    """Write an ``onnxmbs report`` to ``path`` in the format its suffix names, atomically."""
    return write_output("report", report, path)


def write_handbook(book: Any, path: str | Path) -> Path:
    """Write a handbook to ``path`` in the format its suffix names, atomically."""
    return write_output("handbook", book, path)
