"""Compact surgery, part 1 — which original channel every compact channel carries, per tensor.

For every tensor that carries channels (:attr:`ChannelAnalysis.tensor_chan`) a
:class:`Layout` holds two index arrays along its channel axis:

* ``ids``: for each *original* position, the global channel id it carries (group offset +
  index inside the group). Conv/Gemm/MatMul outputs that start a group carry the group in
  order; depthwise convs, element-wise ops, pooling, ... pass their input's ids on; Concat
  concatenates; a channel shuffle (Reshape to ``(s, C/s)`` – Transpose – Reshape) permutes.
* ``pos``: for each *compact* position, the original position it takes its value from —
  what the compact graph computes, order included. A group's producers emit the kept
  channels in ascending order; a shuffle of the compact tensor is applied to ``pos``
  exactly as the compact graph will apply it, so consumers cut their weights with
  ``pos`` and stay exact even when the kept set does not commute with the shuffle.

While a shuffle has the channel axis split in two (``split > 0``) the arrays are flat over
the two axes and ``dims``/``cdims`` give the original and compact split sizes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxmbs.graph.analysis import Analysis
from onnxmbs.errors import MBSError
from onnxmbs.graph.proto import attr, node_names
from onnxmbs.graph.slicing import output_ranges
from onnxmbs.ops.registry import kind


@dataclass(frozen=True, eq=False)
class Layout:
    axis: int
    ids: np.ndarray  # original position -> global channel id
    pos: np.ndarray  # compact position -> original position
    dims: tuple[int, int] | None = None  # original (d0, d1) while the channel axis is split
    cdims: tuple[int, int] | None = None  # compact (d0, d1)

    @property
    def full(self) -> bool:
        return len(self.pos) == len(self.ids)

    def carried(self) -> np.ndarray:
        """Global ids of the compact positions, in compact order."""
        return self.ids[self.pos]


def compact_shape(lay: Layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` of a tensor with its channel axis (or split axes) at the compact width."""
    new = list(shape)
    if lay.dims is not None:
        new[lay.axis], new[lay.axis + 1] = lay.cdims
    else:
        new[lay.axis] = len(lay.pos)
    return tuple(new)


def group_offsets(analysis: Analysis) -> dict[int, int]:
    offsets, total = {}, 0
    for g in analysis.channels.groups:
        offsets[g.id] = total
        total += g.channels
    return offsets


def _new_group(segs: tuple[int, ...], axis: int, offsets: Mapping[int, int], keep: Mapping[int, np.ndarray],
               widths: Mapping[int, int]) -> Layout:
    """A tensor that starts its channels (Conv/Gemm/MatMul output): its groups in order, kept channels ascending."""
    starts = np.cumsum([0] + [widths[g] for g in segs[:-1]])
    ids = np.concatenate([offsets[g] + np.arange(widths[g]) for g in segs])
    pos = np.concatenate([s + np.asarray(keep[g], dtype=np.int64) for g, s in zip(segs, starts)])
    return Layout(axis, ids, pos)


def _transpose_split(lay: Layout, axis: int) -> Layout:
    """(d0, d1) -> (d1, d0): the middle of a channel shuffle."""
    (d0, d1), (c0, c1) = lay.dims, lay.cdims
    ids = lay.ids.reshape(d0, d1).T.reshape(-1)
    moved = lay.pos.reshape(c0, c1).T.reshape(-1)
    pos = (moved % d1) * d0 + moved // d1
    return Layout(axis, ids, pos, (d1, d0), (c1, c0))


# the kinds of :attr:`onnxmbs.ops.rules.OpRules.index`: a new group (a depthwise conv follows its input),
# concatenation along the channel axis, a layout op (reshape, flatten, squeeze, ...), a transpose (the middle of
# a channel shuffle), a Split/Slice (each output its range of the channels), element-wise (the default)
INDEX_KINDS = frozenset({"produce", "concat", "reshape", "transpose", "split", "join"})


class _Walker:
    """One pass over the graph in node order (private; the result is a dict of Layouts)."""

    def __init__(self, analysis: Analysis, keep: Mapping[int, np.ndarray]):
        self.analysis, self.keep = analysis, keep
        self.chans = analysis.channels.tensor_chan
        self.offsets = group_offsets(analysis)
        self.widths = {g.id: g.channels for g in analysis.channels.groups}
        self.convs = {c.name: c for c in analysis.layers}
        self.out: dict[str, Layout] = {}

    def run(self) -> dict[str, Layout]:
        loaded = self.analysis.loaded
        inp = self.chans[loaded.input.name]
        self.out[loaded.input.name] = _new_group(inp.segs, inp.axis, self.offsets, self.keep, self.widths)
        for node, name in zip(loaded.graph.node, node_names(loaded.graph)):
            for output in node.output:
                chan = self.chans.get(output)
                if output and chan is not None:
                    self.out[output] = self._layout(node, name, output, chan)
        return self.out

    def _layout(self, node, name: str, output: str, chan) -> Layout:
        ins = [self.out.get(i) if i not in self.analysis.loaded.constants else None for i in node.input]
        rule = kind(node.op_type, "index")
        if rule == "produce" and not self._follows(node, name, ins):
            return _new_group(chan.segs, chan.axis, self.offsets, self.keep, self.widths)
        if rule == "concat" and self._on_channel_axis(node, output, chan):
            return self._concat(node, name, ins, chan.axis)
        if rule in ("reshape", "transpose") and ins and ins[0] is not None:
            return self._reshape(node, name, ins[0], chan, transpose=rule == "transpose")
        if rule == "split" and ins and ins[0] is not None:
            return self._split(node, name, output, ins[0])
        return self._join(node, name, ins, chan)

    def _split(self, node, name: str, output: str, lay: Layout) -> Layout:
        """One output of a Split/Slice: its range of the input's channels, in the compact order."""
        loaded = self.analysis.loaded
        ranges = output_ranges(node, lay.axis, len(lay.ids), loaded.shapes, loaded.static_values)
        start, stop = ranges[list(node.output).index(output)]
        if (start, stop) == (0, len(lay.ids)):
            return lay
        if lay.dims is not None:
            raise MBSError(f"{node.op_type} '{name}' cuts shuffled channels — report the model")
        return Layout(lay.axis, lay.ids[start:stop], lay.pos[compact_range(node, name, lay, start, stop)] - start)

    def _follows(self, node, name: str, ins: list) -> bool:
        conv = self.convs.get(name)
        return (conv is not None and conv.groups > 1 and conv.out_channels == conv.in_channels
                and ins[0] is not None and ins[0].dims is None)

    def _on_channel_axis(self, node, output: str, chan) -> bool:
        rank = len(self.analysis.loaded.shapes.get(output, ())) or 4
        return attr(node, "axis", 1) % rank == chan.axis

    def _concat(self, node, name: str, ins: list, axis: int) -> Layout:
        if any(i is None or i.dims is not None for i in ins):
            raise MBSError(f"Concat '{name}' joins channel and non-channel inputs — report the model")
        starts = np.cumsum([0] + [len(i.ids) for i in ins[:-1]])
        return Layout(axis, np.concatenate([i.ids for i in ins]),
                      np.concatenate([i.pos + s for i, s in zip(ins, starts)]))

    def _reshape(self, node, name: str, lay: Layout, chan, *, transpose: bool) -> Layout:
        if transpose and lay.dims is not None:
            return _transpose_split(lay, chan.axis)
        if chan.split and lay.dims is None:  # first half of a shuffle: C -> (split, C/split)
            s, c = chan.split, len(lay.pos)
            if c % s:
                raise MBSError(f"{node.op_type} '{name}' splits {c} kept channels into {s} groups — "
                               f"make the group's compact width a multiple of {s} (plan with --round-to {s})")
            return Layout(chan.axis, lay.ids, lay.pos, (s, len(lay.ids) // s), (s, c // s))
        return Layout(chan.axis, lay.ids, lay.pos)  # merge back, transpose, flatten, squeeze

    def _join(self, node, name: str, ins: list, chan) -> Layout:
        """Element-wise and pass-through ops: every channel input must keep the same positions."""
        present = [(i, t) for i, t in zip(ins, node.input) if i is not None]
        if not present:
            raise MBSError(f"{node.op_type} '{name}' outputs channels but no input carries them — "
                           "report the model; onnxmbs cannot follow its channels")
        first = present[0][0]
        for other, _ in present[1:]:
            if not np.array_equal(other.pos, first.pos) or other.dims != first.dims:
                raise MBSError(f"{node.op_type} '{name}' joins inputs that keep different channels "
                               "(e.g. a shuffled and an unshuffled tensor) — onnxmbs cannot compact this join; "
                               "freeze the group by planning with a larger --k")
        out = self.analysis.loaded.shapes.get(node.output[0])
        full = [lay for lay, t in present if self.analysis.loaded.shapes.get(t) == out]
        lay = full[0] if full else first
        return Layout(chan.axis, lay.ids, lay.pos, lay.dims, lay.cdims)


def compact_range(node, name: str, lay: Layout, start: int, stop: int) -> slice:
    """The compact positions that carry the original channels ``[start, stop)`` of ``lay``: one run of them,
    so that a Split/Slice of the compact tensor can take them."""
    inside = np.flatnonzero((lay.pos >= start) & (lay.pos < stop))
    first = int(np.count_nonzero(lay.pos < start))
    if not np.array_equal(inside, np.arange(first, first + len(inside))):
        raise MBSError(f"{node.op_type} '{name}' takes channels {start}..{stop} that the compact tensor does not "
                       "hold side by side (its input joins reordered channels) — report the model")
    return slice(first, first + len(inside))


def tensor_layouts(analysis: Analysis, keep: Mapping[int, np.ndarray]) -> dict[str, Layout]:
    """Layout of every channel-carrying tensor when group ``g`` keeps the local channels ``keep[g]``."""
    return _Walker(analysis, keep).run()


def identity_layouts(analysis: Analysis) -> dict[str, Layout]:
    """Layouts of the original model (every channel kept): ``ids`` only are of interest."""
    return tensor_layouts(analysis, {g.id: np.arange(g.channels) for g in analysis.channels.groups})
