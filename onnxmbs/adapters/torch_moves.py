"""How the PyTorch trace (:mod:`onnxmbs.adapters.torch_trace`) follows ops that move channels: ``chunk``
and ``split`` along the channel axis (each output its range of the input's channel keys), channel
shuffles (``view(B, g, C/g, …)`` → ``transpose`` → ``view``), and permutes. A mixin of the trace's
recorder: it uses the recorder's ``tag``/``put``/``fresh``/``where`` and its ``trace``.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np
import torch

from onnxmbs.adapters.planview import Layout
from onnxmbs.adapters.torch_uses import Tag

MOVES = {"permute", "transpose", "movedim", "swapaxes", "swapdims"}
SPLITS = {"chunk", "split", "split_with_sizes", "tensor_split"}  # only chunk's parts follow the compact width
RESHAPES = {"view", "reshape", "flatten"}


def flat(obj: Any) -> Iterator[Any]:
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from flat(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from flat(item)
    else:
        yield obj


class ChannelMoves:
    """The recorder's rules for ops that move channels (a mixin; see the module docstring)."""

    def shuffle(self, name: str, args: tuple, out: Any, tag: Tag) -> bool:
        """A channel shuffle ``view(B, g, C/g, …) → transpose(1, 2) → view(B, C, …)``: the output is a new key
        whose kept channels the resolution permutes as the compact tensor will be (False: not this pattern)."""
        x, axis = args[0], tag.axis
        if not isinstance(out, torch.Tensor):
            if tag.split:
                self.trace.mark(tag.layout, f"'{name}' of shuffled channels{self.where()}")
            return bool(tag.split)
        if not tag.split:
            c = x.shape[axis]
            if (out.dim() != x.dim() + 1 or out.shape[:axis] != x.shape[:axis] or out.shape[axis + 2:] != x.shape[axis + 1:]
                    or out.shape[axis] * out.shape[axis + 1] != c or out.shape[axis] in (1, c)
                    or tag.layout.inner != 1 or tag.layout.outer != 1):
                return False
            self.put(out, Tag(tag.layout, axis, split=int(out.shape[axis])))
            return True
        if name in MOVES:
            turned = moved(name, args, x, out, Tag(tag.layout, axis))
            if turned is not None and turned.axis == axis + 1 and out.shape[axis] == x.shape[axis + 1]:
                self.put(out, Tag(tag.layout, axis, split=tag.split if tag.swapped else int(x.shape[axis + 1]),
                                  swapped=not tag.swapped))
                return True
        elif name in RESHAPES and out.dim() == x.dim() - 1 and out.shape[axis] == x.shape[axis] * x.shape[axis + 1]:
            if not tag.swapped:
                self.put(out, Tag(tag.layout, axis))
                return True
            groups = int(x.shape[axis + 1])  # (C/g, g) after the transpose: g groups
            layout = self.fresh(("shuffle", len(self.trace.shuffles)), out.shape[axis])
            self.trace.shuffles.append((layout.segs[0], tag.layout, groups, self.where()))
            self.put(out, Tag(layout, axis))
            return True
        if name in RESHAPES | MOVES:
            self.trace.mark(tag.layout, f"'{name}' scatters shuffled channels{self.where()}")
            return True
        return False  # e.g. contiguous(): the generic rule keeps the tag

    def split(self, name: str, args: tuple, out: Any) -> bool:
        """``chunk``/``split`` along the channel axis: each output carries its range of the input's channel keys
        (keys straddling a bound are split into parts); False when it splits another axis (the generic rule)."""
        x, outs = args[0], [o for o in flat(out) if isinstance(o, torch.Tensor)]
        tag = self.tag(x)
        if tag is None or not outs or tag.layout.inner != 1 or tag.layout.outer != 1:
            return False
        sizes = [o.shape[tag.axis] if o.dim() == x.dim() else -1 for o in outs]
        if sum(sizes) != x.shape[tag.axis] or len(outs) < 2:
            return False
        keys = self._cut(tag.layout, np.cumsum(sizes)[:-1].tolist())
        parts = []
        for size in sizes:
            taken, width = [], 0
            while width < size:
                key = keys.pop(0)
                taken.append(key)
                width += self.trace.widths[key]
            parts.append(Layout(tuple(taken)))
        for o, part in zip(outs, parts):
            self.put(o, Tag(part, tag.axis))
        if name == "chunk":  # torch.chunk cuts the tensor it gets into equal parts: fine while the parts stay equal
            self.trace.chunks.append((self.where(), tuple(parts)))
        else:
            for part in parts:
                self.trace.mark(part, f"'{name}' with sizes written in the code{self.where()}")
        return True

    def _cut(self, layout: Layout, bounds: list[int]) -> list[Hashable]:
        """The layout's keys (resolved), split so that a key boundary lies at every position in ``bounds``."""
        out, pos = [], 0
        for key in self.trace.sets.expand(layout.segs):
            width = self.trace.widths[key]
            inner = [b - pos for b in bounds if pos < b < pos + width]
            if inner:
                sizes = [b - a for a, b in zip([0, *inner], [*inner, width])]
                out.extend(self.trace.sets.split_sizes(key, sizes, self.trace.widths))
            else:
                out.append(key)
            pos += width
        return out


def moved(name: str, args: tuple, ref: torch.Tensor, o: torch.Tensor, tag: Tag) -> Tag | None:
    dims = [int(d) for d in flat(args[1:])]
    n = ref.dim()
    if name == "permute":
        perm = [d % n for d in dims]
    elif name == "movedim":
        perm = list(range(n))
        src, dst = dims[0] % n, dims[1] % n
        perm.remove(src)
        perm.insert(dst, src)
    else:
        a, b = dims[0] % n, dims[1] % n
        perm = list(range(n))
        perm[a], perm[b] = perm[b], perm[a]
    if sorted(perm) != list(range(n)) or o.dim() != n:
        return None
    return Tag(tag.layout, perm.index(tag.axis))
