"""Channel groups: which channels are tied together (docs/algorithm.md §8).

Every tensor that carries channels gets a :class:`Chan`: the axis its channels are on and
the list of groups laid along it (one for a conv output, several after a Concat). Groups
meet in union-find when element-wise ops join them; depthwise convs and channel shuffles
keep their input's group; ``Conv(g=1)``, ``Gemm`` and ``MatMul`` mix channels and start
new ones. A group is *frozen* (kept at full width) when it reaches a graph output, comes
from the model input, or touches an op this module has no rule for — with the reason.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx

from onnxmbs.graph.disjoint import DisjointSets
from onnxmbs.graph.load import LoadedModel
from onnxmbs.graph.shapes import ConvLayer
from onnxmbs.graph.shapeflow import width_readers
from onnxmbs.graph.slicing import output_ranges
from onnxmbs.ops.registry import kind
from onnxmbs.graph.proto import attr, node_names


@dataclass(frozen=True)
class Chan:
    axis: int
    segs: tuple[int, ...]  # group ids (raw; resolve with find) along the channel axis
    split: int = 0  # >0 while a channel shuffle has the channel axis split as (split, C/split)


@dataclass(frozen=True)
class ChannelGroup:
    id: int
    channels: int
    producers: tuple[str, ...]  # Conv(g=1) / Gemm / MatMul nodes writing these channels
    followers: tuple[str, ...]  # depthwise / tied grouped convs that carry them on
    frozen: str | None  # reason, or None
    multiple_of: int = 1


@dataclass(frozen=True)
class ChannelAnalysis:
    groups: tuple[ChannelGroup, ...]
    conv_group: Mapping[str, int]  # conv name -> (first) group id of its output
    conv_output_groups: Mapping[str, tuple[int, ...]]  # several when a join split the output to match a concat
    conv_input_groups: Mapping[str, tuple[int, ...]]  # conv name -> groups along its input channels
    tensor_chan: Mapping[str, Chan] = field(repr=False)


@dataclass
class _Group:
    channels: int
    producers: list[str] = field(default_factory=list)
    followers: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    multiple_of: int = 1


class _Builder:
    """Mutable state of one walk over the graph (private; the result is frozen records)."""

    def __init__(self, loaded: LoadedModel, convs: Mapping[str, ConvLayer]):
        self.loaded, self.convs = loaded, convs
        self.sets = DisjointSets()
        self.data: list[_Group] = []
        self.chan: dict[str, Chan] = {}

    @property
    def parts(self) -> dict[int, tuple[int, ...]]:  # a split id -> the ids that replace it
        return self.sets.parts

    def new(self, channels: int, *, producer: str | None = None, frozen: str | None = None) -> int:
        gid = len(self.data)
        self.data.append(_Group(channels, [producer] if producer else [], [], [frozen] if frozen else []))
        self.sets.find(gid)
        return gid

    def expand(self, g: int) -> tuple[int, ...]:
        return self.sets.expand((g,))

    def resolve(self, chan: Chan | None) -> Chan | None:
        if chan is None:
            return None
        return Chan(chan.axis, tuple(x for g in chan.segs for x in self.expand(g)), chan.split)

    def rooted(self, chan: Chan | None) -> Chan | None:
        """``chan`` with every segment named by its set's root (so tied channels compare equal)."""
        chan = self.resolve(chan)
        return None if chan is None else Chan(chan.axis, tuple(self.find(g) for g in chan.segs), chan.split)

    def split(self, g: int, widths: list[int]) -> None:
        """Cut group ``g`` (and every group tied to it) into consecutive parts of ``widths``."""
        d = self.data[self.find(g)]
        made: list[int] = []

        def parts(_member: int) -> tuple[int, ...]:
            ids = tuple(self.new(w) for w in widths)
            made.extend(ids)
            return ids

        self.sets.split(g, parts)
        for gid in made:  # every part inherits the group's facts (before the parts' unions merge them)
            part = self.data[gid]
            part.producers, part.followers, part.frozen = list(d.producers), list(d.followers), list(d.frozen)
            part.multiple_of = d.multiple_of

    def find(self, g: int) -> int:
        return self.sets.find(g)

    def union(self, a: int, b: int) -> None:
        joined = self.sets.union(a, b)
        if joined is None:
            return
        keep, gone = joined
        d, e = self.data[keep], self.data[gone]
        if d.channels != e.channels:
            d.frozen.append(f"joins groups of {d.channels} and {e.channels} channels")
        d.producers += e.producers
        d.followers += e.followers
        d.frozen += e.frozen
        d.multiple_of = math.lcm(d.multiple_of, e.multiple_of)

    def freeze(self, chan: Chan | None, reason: str) -> None:
        for g in self.resolve(chan).segs if chan else ():
            self.data[self.find(g)].frozen.append(reason)

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.loaded.shapes.get(name)

    def width(self, chan: Chan) -> int:
        return sum(self.data[self.find(g)].channels for g in self.resolve(chan).segs)

    def refine(self, chans: list[Chan]) -> list[Chan]:
        """Split groups so that all ``chans`` have the same segment boundaries (equal total widths)."""
        cuts = set()
        for c in chans:
            pos = 0
            for g in self.resolve(c).segs:
                pos += self.data[self.find(g)].channels
                cuts.add(pos)
        for c in chans:
            self.cut_at(c, cuts)
        return [self.resolve(c) for c in chans]

    def cut_at(self, chan: Chan, cuts) -> Chan:
        """Split the groups of ``chan`` so that a segment boundary lies at every position in ``cuts``."""
        pos = 0
        for g in self.resolve(chan).segs:
            w = self.data[self.find(g)].channels
            inner = sorted(x - pos for x in cuts if pos < x < pos + w)
            if inner:
                self.split(g, [b - a for a, b in zip([0, *inner], [*inner, w])])
            pos += w
        return self.resolve(chan)

    def take(self, chan: Chan, start: int, stop: int) -> Chan:
        """The channels ``[start, stop)`` of ``chan`` as a Chan of their own (groups split at the bounds)."""
        pos, segs = 0, []
        for g in self.cut_at(chan, (start, stop)).segs:
            if start <= pos < stop:
                segs.append(g)
            pos += self.data[self.find(g)].channels
        return Chan(chan.axis, tuple(segs))


Rule = Callable[[_Builder, onnx.NodeProto, str, list], "Chan | tuple[Chan | None, ...] | None"]


def _same_layout(b: _Builder, chans: list[Chan]) -> bool:
    chans = [b.resolve(c) for c in chans]
    first = chans[0]
    return all(c.axis == first.axis and c.split == first.split and len(c.segs) == len(first.segs)
               and all(b.data[b.find(x)].channels == b.data[b.find(y)].channels for x, y in zip(c.segs, first.segs))
               for c in chans[1:])


def _join(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    """Element-wise ops: all channel-carrying inputs are tied; constants are per-channel and follow."""
    chans = [c for c in ins if c is not None]
    if not chans:
        return None
    first = chans[0]
    if any(c.axis != first.axis or c.split or b.width(c) != b.width(first) for c in chans) or first.split:
        for c in chans:
            b.freeze(c, f"{node.op_type} '{name}' joins differently laid-out channels")
        return first
    if not _same_layout(b, chans):  # e.g. a conv output added to a concat of two groups: split to match
        chans = b.refine(chans)
    for c in chans[1:]:
        for x, y in zip(c.segs, chans[0].segs):
            b.union(x, y)
    out = b.shape(node.output[0])
    full = [c for c, i in zip(ins, node.input) if c is not None and b.shape(i) == out]
    return b.resolve(full[0] if full else first)


def _first(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    return ins[0] if ins else None


def _conv(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    conv, chan = b.convs[name], ins[0]
    if chan is not None and (chan.axis != 1 or chan.split):
        b.freeze(chan, f"Conv '{name}' reads channels from axis {chan.axis}")
    if conv.groups == 1:
        return Chan(1, (b.new(conv.out_channels, producer=name),))
    if chan is not None and conv.out_channels == conv.in_channels and not chan.split:
        for g in chan.segs:
            b.data[b.find(g)].followers.append(name)
            b.data[b.find(g)].multiple_of = math.lcm(b.data[b.find(g)].multiple_of,
                                                     1 if conv.groups == conv.in_channels else conv.groups)
        if conv.groups != conv.in_channels and len(chan.segs) > 1:
            b.freeze(chan, f"grouped Conv '{name}' over concatenated channels")
        return Chan(1, chan.segs)
    if conv.groups == conv.in_channels:  # depthwise with a channel multiplier
        b.freeze(chan, f"depthwise Conv '{name}' has channel multiplier {conv.out_channels // conv.in_channels}")
        return Chan(1, (b.new(conv.out_channels, frozen=f"output of depthwise multiplier Conv '{name}'"),))
    for g in chan.segs if chan else ():
        b.data[b.find(g)].multiple_of = math.lcm(b.data[b.find(g)].multiple_of, conv.groups)
    gid = b.new(conv.out_channels, producer=name)
    b.data[gid].multiple_of = conv.groups
    return Chan(1, (gid,))


def _mixer(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    """Gemm/MatMul read their input's channels and write new, non-scalable features."""
    chan = ins[0]
    x = b.shape(node.input[0])
    feature_axis = (0 if attr(node, "transA", 0) else 1) if node.op_type == "Gemm" else (len(x) - 1 if x else -1)
    if chan is not None and (chan.axis != feature_axis or chan.split):
        b.freeze(chan, f"{node.op_type} '{name}' reads these channels mixed with other axes")
    y = b.shape(node.output[0])
    return Chan(len(y) - 1, (b.new(y[-1], producer=name),)) if y else None


def _transpose(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    chan = ins[0]
    if chan is None:
        return None
    rank = len(b.shape(node.input[0]) or ()) or 4
    perm = list(attr(node, "perm", list(range(rank))[::-1]))
    if chan.split:  # channel shuffle: (g, C/g) swapped to (C/g, g)
        if chan.axis in perm and chan.axis + 1 in perm and perm.index(chan.axis + 1) == perm.index(chan.axis) - 1:
            return Chan(perm.index(chan.axis + 1), chan.segs, split=chan.split)
        b.freeze(chan, f"Transpose '{name}' scatters split channels")
        return None
    return Chan(perm.index(chan.axis), chan.segs)


def _reshape(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    chan, x, y = ins[0], b.shape(node.input[0]), b.shape(node.output[0])
    if chan is None:
        return None
    if x is None or y is None:
        b.freeze(chan, f"{node.op_type} '{name}' has unknown shapes")
        return None
    c = b.width(chan)
    if chan.split:  # merge (a, b) back into one channel axis: the shuffle is done
        if len(y) == len(x) - 1 and y[chan.axis] == c and len(chan.segs) == 1:
            b.data[b.find(chan.segs[0])].multiple_of = math.lcm(b.data[b.find(chan.segs[0])].multiple_of, chan.split)
            return Chan(chan.axis, chan.segs)
        b.freeze(chan, f"{node.op_type} '{name}' reshapes shuffled channels")
        return None
    a = chan.axis
    splits_channels = len(y) == len(x) + 1 and y[:a] == x[:a] and y[a + 2:] == x[a + 1:]
    if splits_channels and y[a] * y[a + 1] == c and len(chan.segs) == 1:
        return Chan(a, chan.segs, split=y[a])  # first half of a channel shuffle
    rest = math.prod(x) // (x[0] * c) if x[0] else 0
    hits = [i for i in range(1, len(y)) if y[i] == c]
    if rest == 1 and y[0] == x[0] and len(hits) == 1:  # squeeze/flatten of a 1x1 map keeps channels
        return Chan(hits[0], chan.segs)
    b.freeze(chan, f"{node.op_type} '{name}' merges channels with other axes {tuple(x)} -> {tuple(y)}")
    return None


def _concat(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    chans = [c for c in ins if c is not None]
    rank = len(b.shape(node.output[0]) or ()) or 4
    axis = attr(node, "axis", 1) % rank
    if not chans:
        return None
    if len(chans) != len(ins) or any(c.split for c in chans) or any(c.axis != chans[0].axis for c in chans):
        for c in chans:
            b.freeze(c, f"Concat '{name}' mixes channel and non-channel inputs")
        return None
    if axis == chans[0].axis:
        return Chan(axis, tuple(g for c in chans for g in c.segs))
    return _join(b, node, name, ins)


def _split(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> tuple[Chan | None, ...] | None:
    """Split and Slice: along another axis every output keeps the channels; along the channel axis each
    output takes its range of them (groups are split at the range bounds, e.g. YOLO's C2f ``chunk``)."""
    chan = ins[0]
    if chan is None:
        return None
    ranges = output_ranges(node, chan.axis, b.width(chan), b.loaded.shapes, b.loaded.static_values)
    if ranges is None:
        b.freeze(chan, f"{node.op_type} '{name}' cuts the channel axis at bounds known only at run time")
        return None
    if all(r == (0, b.width(chan)) for r in ranges):
        return tuple(chan for _ in node.output)  # sliced along another axis
    if chan.split:
        b.freeze(chan, f"{node.op_type} '{name}' cuts shuffled channels")
        return None
    if any(start >= stop for start, stop in ranges):
        b.freeze(chan, f"{node.op_type} '{name}' has an empty output")
        return None
    return tuple(b.take(chan, start, stop) for start, stop in ranges)


def _layernorm(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> tuple[Chan | None, ...] | None:
    """LayerNorm over the channel axis alone keeps the channels (its Mean/InvStdDev outputs carry none);
    over more axes than the channels it mixes them with those axes."""
    chan, x = ins[0], b.shape(node.input[0])
    if chan is None:
        return None
    rank = len(x) if x else 0
    if not rank or chan.split or int(attr(node, "axis", -1)) % rank != chan.axis or chan.axis != rank - 1:
        b.freeze(chan, f"{node.op_type} '{name}' normalises the channels together with other axes")
        return None
    return (chan, *(None for _ in node.output[1:]))


def _reduce(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    """Reductions over other axes keep the channels (global pooling); over the channel axis they mix."""
    chan, x, y = ins[0], b.shape(node.input[0]), b.shape(node.output[0])
    if chan is None or x is None or y is None:
        return chan
    if len(y) == len(x) and y[chan.axis] == x[chan.axis]:
        return chan
    hits = [i for i, d in enumerate(y) if d == x[chan.axis] and i > 0]
    if len(y) < len(x) and len(hits) == 1:
        return Chan(hits[0], chan.segs)
    b.freeze(chan, f"{node.op_type} '{name}' reduces over the channel axis")
    return None


def _freeze_all(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    for c in ins:
        b.freeze(c, f"consumed by {node.op_type} '{name}', which onnxmbs cannot resize")
    return None


def _none(b: _Builder, node: onnx.NodeProto, name: str, ins: list) -> Chan | None:
    return None


# the kinds of :attr:`onnxmbs.ops.rules.OpRules.channels`; a declined or unknown op freezes what it reads
CHANNEL_KINDS: dict[str, Rule] = {
    "conv": _conv, "mixer": _mixer, "transpose": _transpose, "reshape": _reshape, "concat": _concat,
    "split": _split, "layernorm": _layernorm, "reduce": _reduce, "join": _join, "first": _first, "none": _none,
}


def analyze_channels(loaded: LoadedModel, convs: tuple[ConvLayer, ...]) -> ChannelAnalysis:
    """Walk the graph once and return the channel groups with their producers and freeze reasons."""
    b = _Builder(loaded, {c.name: c for c in convs})
    inp = loaded.input
    b.chan[inp.name] = Chan(1 if inp.layout == "NCHW" else 3, (b.new(inp.channels, frozen="model input channels"),))
    conv_in: dict[str, tuple[int, ...]] = {}
    for node, name in zip(loaded.graph.node, node_names(loaded.graph)):
        ins = [b.resolve(b.chan.get(i)) if i not in loaded.constants else None for i in node.input]
        if node.op_type == "Conv":
            conv_in[name] = ins[0].segs if ins[0] is not None else ()
        rule = kind(node.op_type, "channels")
        out = (CHANNEL_KINDS[rule] if rule else _freeze_all)(b, node, name, ins)
        per_output = out if isinstance(out, tuple) else (out,) * len(node.output)
        for o, c in zip(node.output, per_output):
            if o and c is not None:
                b.chan[o] = c
    for gout in loaded.graph.output:
        b.freeze(b.chan.get(gout.name), f"reaches graph output '{gout.name}'")
    for chan, reason in width_readers(loaded.graph, lambda t: b.rooted(b.chan.get(t)), loaded.constants):
        b.freeze(chan, reason)
    return _finish(b, convs, conv_in)


def _finish(b: _Builder, convs: tuple[ConvLayer, ...], conv_in: dict[str, tuple[int, ...]]) -> ChannelAnalysis:
    roots = sorted({b.find(g) for g in range(len(b.data)) if g not in b.parts})
    number = {r: i for i, r in enumerate(roots)}
    groups = tuple(ChannelGroup(
        id=number[r], channels=b.data[r].channels, producers=tuple(dict.fromkeys(b.data[r].producers)),
        followers=tuple(dict.fromkeys(b.data[r].followers)),
        frozen="; ".join(dict.fromkeys(b.data[r].frozen)) or None, multiple_of=b.data[r].multiple_of)
        for r in roots)
    chans = {t: Chan(c.axis, tuple(number[b.find(g)] for g in c.segs), c.split)
             for t, c in ((t, b.resolve(c)) for t, c in b.chan.items())}
    out_groups = {c.name: chans[c.output].segs for c in convs if c.output in chans}
    conv_group = {name: segs[0] for name, segs in out_groups.items()}
    conv_input = {name: tuple(number[b.find(g)] for s in segs for g in b.expand(s)) for name, segs in conv_in.items()}
    return ChannelAnalysis(groups=groups, conv_group=conv_group, conv_output_groups=out_groups,
                           conv_input_groups=conv_input, tensor_chan=chans)
