"""Finished training runs on disk: one small JSON file per run, written atomically as it completes.

The run directory holds ``settings.json`` (what the runs depend on) and ``runs/<key>.json``.
A handbook restarted with the same directory skips every run already there; one whose
settings differ (another model, recipe, init or calibration) is refused rather than mixed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from onnxmbs.errors import MBSError
from onnxmbs.files import write_json
from onnxmbs.handbook.record import Run, Settings

logger = logging.getLogger(__name__)


class RunStore:
    """The saved runs of one handbook (``root/settings.json``, ``root/runs/*.json``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @contextlib.contextmanager
    def removed_on_failure(self) -> Iterator[None]:
        """A directory this block creates is removed again if the block fails before any run finished
        (finished runs are kept: the same command continues from them)."""
        created = not self.root.exists()
        try:
            yield
        except BaseException:
            if created and self.root.is_dir() and not any((self.root / "runs").glob("*.json")):
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def stats_path(self) -> Path:
        return self.root / "stats.json"

    def open(self, settings: Settings) -> None:
        """Start or resume: refuse a directory whose runs were made with other settings."""
        path = self.root / "settings.json"
        wanted = settings.fingerprint()
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = None
            if saved != json.loads(json.dumps(wanted)):
                changed = sorted(k for k in wanted if not isinstance(saved, dict) or saved.get(k) != wanted[k])
                raise MBSError(f"{self.root} holds runs made with other settings ({', '.join(changed) or 'unreadable'}"
                               ") — use another --runs directory, or delete it to start over")
        else:
            write_json(path, wanted)

    def load(self) -> dict[str, Run]:
        """Every finished run, by key (a damaged file is skipped with a warning and re-run)."""
        runs = {}
        for path in sorted((self.root / "runs").glob("*.json")):
            try:
                run = Run.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring damaged run file %s (%s); it will be run again", path, exc)
                continue
            runs[run.key] = run
        return runs

    def save(self, run: Run) -> Path:
        return write_json(self.root / "runs" / f"{run.key}.json", run)
