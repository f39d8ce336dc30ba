"""One progress bar for every long loop (tqdm on stderr, on a terminal by default)."""
from __future__ import annotations

import sys
from typing import Any


def progress_bar(enabled: bool | None, *, total: int | None, unit: str, desc: str) -> Any | None:
    """A tqdm bar, or None when disabled (``enabled=None``: only when stderr is a terminal)."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)
