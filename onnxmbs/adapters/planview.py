"""What the framework adapters read from a plan, and the channel bookkeeping they share.

Framework-free (numpy and onnx only). A :class:`PlanView` is the validated part of an
``onnxmbs.plan/1`` document the adapters need: the conv layers in ONNX order with their
compact widths, and the channel groups. A :class:`Layout` says which channel groups a
tensor carries along its channel axis (several after a concatenation), so an adapter can
resize every consumer (BatchNorm, depthwise conv, classifier) and slice inherited weights
the same way in every layer that reads a group.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.graph.disjoint import DisjointSets
from onnxmbs.planning.document import LayerRecord, PlanDocument, as_plan

logger = logging.getLogger(__name__)

INITS = ("scratch", "inherit", "onnx")
SELECTS = ("nonzero", "l1")  # compact's --select rules an adapter can follow (greedy needs data: use init="onnx")


@dataclass(frozen=True)
class PlanView:
    layers: tuple[LayerRecord, ...]
    channels: Mapping[int, int]  # group id -> original width
    widths: Mapping[int, int]  # group id -> compact width
    model_path: str | None
    input_hw: tuple[int, int] | None
    multiple_of: Mapping[int, int] = field(default_factory=dict)  # group id -> what its grouped convs need

    def layer(self, name: str) -> LayerRecord:
        return next(spec for spec in self.layers if spec.name == name)


def check_init(init: str) -> str:
    if init not in INITS:
        raise MBSError(f"unknown init {init!r} — use init='scratch' (retrain from scratch, the paper's way), "
                       "init='inherit' (keep the surviving channels' weights) or init='onnx' with compact_onnx= "
                       "(the weights of a compact ONNX file, e.g. a reconstructed one)")
    return init


def load_plan(plan: PlanDocument | Mapping[str, Any] | str | Path) -> PlanView:
    """Validate a plan (the record, its JSON dict, or a path) into a :class:`PlanView`."""
    doc = as_plan(plan)
    return PlanView(layers=doc.layers, channels={g.id: g.channels for g in doc.groups}, widths=doc.group_widths(),
                    multiple_of={g.id: g.multiple_of for g in doc.groups},
                    model_path=doc.model.path, input_hw=doc.model.input_hw)


# ---------------------------------------------------------------- channel layouts
@dataclass(frozen=True)
class Layout:
    """The channel groups laid along a tensor's channel axis.

    ``segs`` are group keys (any hashable; adapters use their own keys and resolve them to plan
    groups later). A flattened feature vector of a channel tensor has ``outer`` copies of the
    channel axis, each channel spread over ``inner`` consecutive features: PyTorch's NCHW
    flatten has ``inner = H*W``, Keras' NHWC flatten ``outer = H*W``.
    """

    segs: tuple[Hashable, ...]
    inner: int = 1
    outer: int = 1

    def width(self, widths: Mapping[Hashable, int]) -> int:
        return sum(widths[s] for s in self.segs) * self.inner * self.outer

    def channel_index(self, keep: Mapping[Hashable, np.ndarray], widths: Mapping[Hashable, int]) -> np.ndarray:
        """Indices into the original channel axis of the channels that survive."""
        parts, offset = [], 0
        for seg in self.segs:
            parts.append(keep[seg] + offset)
            offset += widths[seg]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def feature_index(self, keep: Mapping[Hashable, np.ndarray], widths: Mapping[Hashable, int]) -> np.ndarray:
        """Indices into the original flattened features (``outer × channels × inner``)."""
        chans = self.channel_index(keep, widths)
        total = sum(widths[s] for s in self.segs)
        per_outer = (chans[:, None] * self.inner + np.arange(self.inner)[None, :]).reshape(-1)
        return (np.arange(self.outer)[:, None] * total * self.inner + per_outer[None, :]).reshape(-1)


class KeySets(DisjointSets):
    """Union-find over layout keys: element-wise ops tie the channels of their inputs.

    A key may be *split* into consecutive parts (GhostNet: a 16-channel conv added to a concat
    of 8 + 8): every key tied to it is split the same way, each part tied to its counterpart.
    """

    def split_sizes(self, key: Hashable, sizes: Sequence[int], widths: dict[Hashable, int]) -> tuple[Hashable, ...]:
        """Split ``key`` and every key tied to it into parts of ``sizes`` channels; the parts of ``key``."""
        def parts(member: Hashable) -> tuple[Hashable, ...]:
            made = tuple(("part", member, i) for i in range(len(sizes)))
            for part, size in zip(made, sizes):
                widths[part] = int(size)
                self.find(part)
            return made

        return self.split(key, parts)

    def tie(self, a: Layout, b: Layout, widths: dict[Hashable, int]) -> bool:
        """Tie the channels of two layouts joined element-wise; False when they cannot be lined up."""
        if (a.inner, a.outer) != (b.inner, b.outer):
            return False
        sa, sb = self.expand(a.segs), self.expand(b.segs)
        if len(sa) != len(sb):
            total = [sum(widths[s] for s in segs) for segs in (sa, sb)]
            if total[0] != total[1] or 1 not in (len(sa), len(sb)):
                return False
            if len(sa) == 1:
                sa = self.split_sizes(sa[0], [widths[s] for s in sb], widths)
            else:
                sb = self.split_sizes(sb[0], [widths[s] for s in sa], widths)
        for x, y in zip(sa, sb):
            self.union(x, y)
        return True


@dataclass
class ChannelBook:
    """What an adapter's walk over a framework model learns about channels (PyTorch trace, Keras walk)."""
    sets: KeySets = field(default_factory=KeySets)
    widths: dict[Hashable, int] = field(default_factory=dict)
    unsupported: dict[Hashable, list[str]] = field(default_factory=dict)

    def mark(self, layout: Layout | None, reason: str) -> None:
        """These channels pass something the adapter cannot resize: their groups must stay whole."""
        for key in layout.segs if layout else ():
            self.unsupported.setdefault(key, []).append(reason)

    def fresh(self, key: Hashable, width: int) -> Layout:
        """A new channel set of ``width`` channels (a conv's or a fixed tensor's output)."""
        self.widths[key] = int(width)
        self.sets.find(key)
        return Layout((key,))


def whole_key(key: Hashable) -> Hashable:
    """The key a part was split from (the key itself when it is no part)."""
    while isinstance(key, tuple) and len(key) == 3 and key[0] == "part":
        key = key[1]
    return key


def resolve_splits(sets: KeySets, channels: dict, widths: dict, keep: dict) -> None:
    """Width and kept channels of every split key, from its parts (the parts must be resolved)."""
    def fill(key: Hashable) -> None:
        if key in widths:
            return
        parts = sets.parts[key]
        for part in parts:
            fill(part)
        offsets = np.cumsum([0] + [channels[p] for p in parts[:-1]])
        channels[key] = sum(channels[p] for p in parts)
        widths[key] = sum(widths[p] for p in parts)
        keep[key] = np.concatenate([keep[p] + o for p, o in zip(parts, offsets)])

    for key in sets.parts:
        fill(key)


@dataclass(frozen=True)
class Resolution:
    """Layout keys resolved to widths: original, compact, and the surviving channel indices."""

    channels: Mapping[Hashable, int]
    widths: Mapping[Hashable, int]
    keep: Mapping[Hashable, np.ndarray] = field(repr=False)

    def changed(self, key: Hashable) -> bool:
        return self.widths[key] != self.channels[key]


def check_supported(unsupported: Mapping[Hashable, Sequence[str]], res: Resolution) -> None:
    """Refuse to resize a channel set that reaches a layer the adapter has no resize rule for."""
    for key, reasons in unsupported.items():
        if res.changed(key):
            where = f"part {key[2] + 1} of '{whole_key(key)[1]}'" if whole_key(key) != key else f"'{key[1]}'"
            raise MBSError(f"cannot resize the channels of {where} ({res.channels[key]} -> {res.widths[key]}): "
                           f"{reasons[0]} has no resize rule — keep this group at full width "
                           "(β = 1) or replace the layer by a supported one")


def narrowed_fixed(layers: str, fixed: str) -> MBSError:
    """The error for a plan that narrows channels tied to a tensor whose width the adapter cannot change."""
    kind, _, name = fixed.partition(":")
    if kind in ("linear", "dense") and name:
        return MBSError(f"the plan narrows channels of {layers} that the {kind.title()} layer '{name}' writes — the "
                        "adapters cannot resize a Linear/Dense producer yet (`onnxmbs compact` can): carry the compact "
                        "ONNX model, or keep this group at full width (β = 1)")
    return MBSError(f"channels of {layers} are tied to {fixed}, whose width cannot change, but the plan narrows "
                    "them — make the plan from an ONNX export of this very model")


def plan_groups(specs: Sequence[LayerRecord], view: PlanView, where: str) -> set[int]:
    """The plan groups a set of tied conv outputs belongs to; split outputs are refused when resized."""
    for spec in specs:
        split = spec.output_groups
        if len(split) > 1 and any(view.widths[g] != view.channels[g] for g in split):
            raise MBSError(f"the plan splits the output of '{spec.name}' ({where}) into channel groups {list(split)} "
                           "that are resized separately — the adapters cannot do that yet; plan with those "
                           "groups at full width or use `onnxmbs compact` on the ONNX model")
    return {g for s in specs for g in s.output_groups}


def kept_channels(specs: Sequence[LayerRecord], width: int, count: int,
                  l1: Callable[[LayerRecord], np.ndarray | None], *,
                  measured: Sequence[LayerRecord] | None = None, select: str = "nonzero",
                  offsets: Mapping[str, int] | None = None, multiple_of: int = 1, shuffle: int = 0,
                  producers: Sequence[np.ndarray] = ()) -> np.ndarray:
    """The ``count`` channels of a ``width``-channel group to keep — the rule ``onnxmbs compact`` uses
    (:func:`onnxmbs.compact.select.pick`), so an adapter with ``init="inherit"`` keeps the channels the
    compact ONNX keeps: the measured non-zero rate first (mean over the group's layers), ties broken by
    the producers' filter L1 norms (each producer's norms over their mean, summed; ``l1`` gives a
    layer's norms as the exporter folds them, BatchNorm scale included), then the channel index.
    ``measured``: every plan layer whose output is this group (a depthwise conv's too: it writes the
    channels it reads), whose rates are averaged; default ``specs``. ``select="l1"``: the L1 norms alone
    (as ``compact --select l1``). ``offsets``: layers whose output holds this group as a part (a ``chunk`` of
    their output) — layer name -> where the group starts in it; their norms and rates are taken there.
    ``multiple_of`` / ``shuffle``: the structure rules of :func:`onnxmbs.compact.select.pick` (grouped convs,
    a channel shuffle of ``shuffle`` groups), so a ShuffleNet keeps the channels compact keeps.
    ``producers``: L1 norms of producers that are no plan layer (a Linear writing the channels)."""
    if select not in SELECTS:
        raise MBSError(f"select must be one of {', '.join(SELECTS)} (the rules of `onnxmbs compact --select`), "
                       f"got {select!r}")
    from onnxmbs.compact.select import pick

    offsets = offsets or {}

    def part(values, spec: LayerRecord) -> np.ndarray | None:
        """This group's channels of one layer's per-channel values (all of them unless the layer has an offset)."""
        if values is None:
            return None
        start = offsets.get(spec.name)
        values = np.asarray(values, np.float64)
        if start is None:
            return values if len(values) == width else None
        return values[start:start + width] if len(values) >= start + width else None

    norms = [x for x in (part(n / n.mean() if n is not None and n.mean() > 0 else n, s) for s, n in
                         ((s, l1(s)) for s in specs)) if x is not None]
    norms += [n / n.mean() if n.mean() > 0 else n for n in map(np.asarray, producers) if len(n) == width]
    secondary = np.sum(norms, axis=0) if norms else -np.arange(width, dtype=np.float64)
    rates = [x for x in (part(s.channel_p_nonzero, s) for s in (specs if measured is None else measured))
             if x is not None] if select == "nonzero" else []
    primary = np.mean(rates, axis=0) if rates else secondary
    return np.asarray(pick(primary, secondary, count, multiple_of=multiple_of, shuffle=shuffle), dtype=np.int64)


def group_layers(view: PlanView, groups: set[int]) -> tuple[LayerRecord, ...]:
    """The plan layers whose output is exactly ``groups`` (what ``onnxmbs compact`` averages rates over)."""
    return tuple(spec for spec in view.layers if spec.output_groups and set(spec.output_groups) == groups)


# ---------------------------------------------------------------- plan layer -> framework layer
@dataclass(frozen=True)
class Candidate:
    """A framework conv layer the adapter found, with what the plan can be matched on."""

    name: str
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    out_hw: tuple[int, ...] | None

    def fits(self, spec: LayerRecord) -> bool:
        return ((self.in_channels, self.out_channels, self.groups, self.kernel, self.stride)
                == (spec.in_channels, spec.out_channels, spec.groups, spec.kernel, spec.stride)
                and (self.out_hw is None or self.out_hw == spec.out_hw))


def onnx_weight_names(view: PlanView, onnx_path: str | Path | None = None) -> dict[str, str]:
    """Conv node name -> its weight input's name, read from the planned ONNX file when it exists."""
    path = Path(onnx_path or view.model_path or "")
    if not path.is_file():
        logger.debug("planned ONNX file %s not found: matching layers by order and shape", path)
        return {}
    import onnx

    from onnxmbs.graph.proto import node_names

    graph = onnx.load(str(path), load_external_data=False).graph
    return {name: node.input[1] for node, name in zip(graph.node, node_names(graph))
            if node.op_type == "Conv" and len(node.input) > 1}


def match_layers(view: PlanView, candidates: Sequence[Candidate],
                 named: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Plan layer name -> framework layer name.

    First by the names the exporter left (``named``: plan layer -> candidate names, best first),
    each checked against the layer's shape; the rest in order within each shape signature.
    """
    by_name = {c.name: c for c in candidates}
    result: dict[str, str] = {}
    taken: set[str] = set()
    for spec in view.layers:
        for guess in named.get(spec.name, ()):
            cand = by_name.get(guess)
            if cand is not None and guess not in taken and cand.fits(spec):
                result[spec.name] = guess
                taken.add(guess)
                break
    free = [c for c in candidates if c.name not in taken]
    for spec in view.layers:
        if spec.name in result:
            continue
        cand = next((c for c in free if c.name not in taken and c.fits(spec)), None)
        if cand is None:
            raise MBSError(f"plan layer '{spec.name}' ({spec.in_channels}->{spec.out_channels} channels, "
                           f"kernel {spec.kernel}, stride {spec.stride}, groups {spec.groups}) has no matching "
                           "conv in the model — was the plan made from an export of this model at this input size?")
        result[spec.name] = cand.name
        taken.add(cand.name)
    extra = [c.name for c in candidates if c.name not in taken]
    if extra:
        raise MBSError(f"conv layer(s) {', '.join(extra[:5])} of the model are not in the plan — make the plan "
                       "from an ONNX export of this very model; if it is one, the module runs convs whose results "
                       "the export dropped (unused outputs): give apply_plan a module returning what was exported")
    return result


def scope_path(node_name: str) -> str | None:
    """Module path from a TorchScript-exporter node name, e.g.
    ``/stages/stages.0/stages.0.0/body/body.0/Conv`` -> ``stages.0.0.body.0``."""
    parts = [p for p in node_name.split("/") if p][:-1]
    if not parts:
        return None
    path, prev = parts[0], parts[0]
    for part in parts[1:]:
        path = path + part[len(prev):] if part.startswith(prev + ".") else f"{path}.{part}"
        prev = part
    return path
