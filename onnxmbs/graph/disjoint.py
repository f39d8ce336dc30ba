"""Union-find over channel-group keys, with keys split into parts.

Channels are tied when tensors meet element-wise; the analysis (``graph.channels``) and the
framework adapters (``adapters.planview``) both keep such sets. A key can be *split* into
consecutive parts (a 16-channel conv added to a concat of 8 + 8): every key tied to it is
split the same way and each part is tied to its counterparts.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence


class DisjointSets:
    """Sets of hashable keys; the root of a union is the key of the two that was seen first."""

    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.order: dict[Hashable, int] = {}
        self.parts: dict[Hashable, tuple[Hashable, ...]] = {}  # split key -> its parts, in channel order

    def find(self, key: Hashable) -> Hashable:
        if key not in self.parent:
            self.parent[key], self.order[key] = key, len(self.order)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: Hashable, b: Hashable) -> tuple[Hashable, Hashable] | None:
        """Tie ``a`` and ``b``; (kept root, absorbed root), or None when they were tied already."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        keep, gone = (ra, rb) if self.order[ra] <= self.order[rb] else (rb, ra)
        self.parent[gone] = keep
        return keep, gone

    def members(self) -> dict[Hashable, list[Hashable]]:
        """Root -> every key tied to it, in the order the keys were seen."""
        out: dict[Hashable, list[Hashable]] = {}
        for key in list(self.parent):
            out.setdefault(self.find(key), []).append(key)
        return out

    def expand(self, segs: Sequence[Hashable]) -> tuple[Hashable, ...]:
        """``segs`` with every split key replaced by its parts (recursively)."""
        return tuple(p for s in segs for p in (self.expand(self.parts[s]) if s in self.parts else (s,)))

    def split(self, key: Hashable, make_parts: Callable[[Hashable], tuple[Hashable, ...]]) -> tuple[Hashable, ...]:
        """Split ``key`` and every key tied to it into the parts ``make_parts(member)``; the parts of ``key``."""
        tied = [m for m in self.members()[self.find(key)] if m not in self.parts]
        for member in tied:
            self.parts[member] = make_parts(member)
        for member in tied[1:]:
            for a, b in zip(self.parts[tied[0]], self.parts[member]):
                self.union(a, b)
        return self.parts[key]
