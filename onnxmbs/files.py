"""Files in and out: every output is written to a temporary file beside it and renamed.

A crash or a refused result never leaves half a file, and never replaces what the
user had with something broken.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from onnxmbs.errors import MBSError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Side files a writer puts next to the temporary one (``<tmp>.data``, ONNX external
    data) are removed when the block fails.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp + ".data"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)


def write_atomic(path: str | Path, text: str | bytes) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    return Path(path)


def write_json(path: str | Path, document: Mapping[str, Any] | Any) -> Path:
    """A JSON document (a mapping, or a record with ``to_json()``), indented, written atomically."""
    data = document.to_json() if hasattr(document, "to_json") else document
    return write_atomic(path, json.dumps(data, indent=1) + "\n")


def read_document(path: str | Path, *, schema: str, what: str, how: str) -> dict[str, Any]:
    """A JSON document of ``schema``; ``what`` names it and ``how`` says how to make one, in errors."""
    path = Path(path)
    if not path.is_file():
        raise MBSError(f"{what} not found: {path} — {how}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MBSError(f"{path} is not valid JSON ({exc}) — {how}") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        raise MBSError(f"{path} is not an {what} (schema {schema!r} expected) — {how}")
    return doc
