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
    _usual_permissions(tmp)  # mkstemp makes 0600
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp + ".data"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)


def _usual_permissions(path: str | os.PathLike[str]) -> None:
    """0666 less the umask, as a file the user created would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_atomic(path: str | Path, text: str | bytes) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    return Path(path)


EXTERNAL_OVER = 2**31 - 2**27  # protobuf cannot serialise 2 GiB; from ~1.9 GB weights go to a .data file
EXTERNAL_THRESHOLD = 1024  # tensors from this many bytes go to the .data file (onnx's default)


def write_onnx(path: str | Path, proto: Any, *, external: bool = False) -> int:
    """Write the ModelProto ``proto`` to ``path`` atomically; with ``external`` (or beyond protobuf's limit)
    its weights go to ``<path>.data`` beside it, each file replaced by a rename. Returns every byte written.

    Works from any working directory, over an earlier output too: onnx's own ``save_as_external_data``
    refuses a data file name that exists *in the working directory*, so the tensors are marked here."""
    import copy

    output = Path(path)
    if not external and proto.ByteSize() <= EXTERNAL_OVER:
        write_atomic(output, proto.SerializeToString())
        return output.stat().st_size
    import onnx
    from onnx.external_data_helper import set_external_data

    data = output.with_name(output.name + ".data")
    staged_proto = copy.deepcopy(proto)
    for tensor in _initializers(staged_proto.graph):
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= EXTERNAL_THRESHOLD:
            set_external_data(tensor, data.name)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name
        onnx.save_model(staged_proto, str(staged))  # writes the marked tensors to <tmp>/<name>.data
        if staged.with_name(data.name).exists():
            _usual_permissions(staged.with_name(data.name))
            os.replace(staged.with_name(data.name), data)
        os.replace(staged, output)
    return output.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _initializers(graph: Any) -> Iterator[Any]:
    """The graph's initializers and those of its subgraphs (If/Loop/Scan bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _initializers(sub)


def write_json(path: str | Path, document: Mapping[str, Any] | Any) -> Path:
    """A JSON document (a mapping, or a record with ``to_json()``), indented, written atomically."""
    data = document.to_json() if hasattr(document, "to_json") else document
    return write_atomic(path, json.dumps(data, indent=1) + "\n")


def suggested_output(path: str | Path, *, suffix: str = ".json") -> Path:
    """The ``-o`` a hint proposes for a file meant to be at ``path``: ``path`` itself while nothing is there,
    else a free name beside it (NAME.json, NAME-2.json, ...). A hint never proposes overwriting a file, so
    never one of the command's inputs."""
    path = Path(path)
    if not os.path.lexists(path):
        return path
    stem = path.name[:-len(suffix)] if path.name.endswith(suffix) else path.with_suffix("").name
    candidates = (path.with_name(f"{stem}{'' if n == 1 else f'-{n}'}{suffix}") for n in range(1, 10_000))
    return next(c for c in candidates if not os.path.lexists(c))


def read_document(path: str | Path, *, schema: str, what: str, how: str) -> dict[str, Any]:
    """A JSON document of ``schema``; ``what`` names it and ``how`` says how to make one, in errors
    (``{output}`` in ``how`` becomes :func:`suggested_output` of ``path``)."""
    path = Path(path)
    how = how.replace("{output}", str(suggested_output(path)))
    if not path.is_file():
        raise MBSError(f"{what} not found: {path} — {how}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MBSError(f"{path} is not valid JSON ({exc}) — {how}") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        raise MBSError(f"{path} is not an {what} (schema {schema!r} expected) — {how}")
    return doc
