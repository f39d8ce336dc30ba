"""Quantities for people: 1.5M, 250k, 4G — printed and parsed the same way everywhere."""
from __future__ import annotations

import re

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_COUNT = re.compile(r"\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([kmgt]?)\s*", re.I)


def human(n: float) -> str:
    """272474 -> '272.47k', 4.1e9 -> '4.10G' (two decimals, SI suffix)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def parse_count(text: str) -> int | None:
    """'272_474', '2.5e5', '250k', '1.5M', '4G' -> an integer; None when it is not a count."""
    match = _COUNT.fullmatch(str(text))
    if not match:
        return None
    return round(float(match.group(1).replace("_", "")) * _SUFFIX[match.group(2).lower()])


def before_after(pairs, arrow: str = "->") -> str:
    """``32,64 -> 30,47``: (before, after) pairs of counts, the befores then the afters."""
    return ",".join(str(a) for a, _ in pairs) + f" {arrow} " + ",".join(str(b) for _, b in pairs)
