"""The plan: Algorithm 1 and the channel-coupling rules, pure numpy (docs/algorithm.md §6-8).

No onnx, no onnxruntime: the inputs are the records of :mod:`onnxmbs.planning.facts`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.planning.facts import GroupFacts, LayerFacts, ParamSpec


@dataclass(frozen=True)
class MacroblockPlan:
    index: int
    e_total: float
    e_base: float
    redundancy: float
    beta: float


@dataclass(frozen=True)
class GroupPlan:
    id: int
    channels: int
    compact_channels: int
    beta: float
    frozen: str | None


@dataclass(frozen=True)
class Summary:
    params: int
    params_compact: int
    flops: int
    flops_compact: int

    @property
    def param_reduction(self) -> float:
        return 1.0 - self.params_compact / self.params if self.params else 0.0

    @property
    def flop_reduction(self) -> float:
        return 1.0 - self.flops_compact / self.flops if self.flops else 0.0


@dataclass(frozen=True)
class Plan:
    z: float
    k: float | None
    rf_boundary: int | None
    base: Mapping[str, bool]
    macroblocks: tuple[MacroblockPlan, ...]
    groups: tuple[GroupPlan, ...]
    summary: Summary

    def widths(self) -> dict[int, int]:
        return {g.id: g.compact_channels for g in self.groups}


def threshold(L: int, *, k: float | None = None, z: float | None = None) -> tuple[float, float | None]:  # noqa: N803
    """``z = k·L`` (default k = 1.0) or an explicit z in pixels."""
    if k is not None and z is not None:
        raise MBSError("give either --k or --z, not both")
    if z is not None:
        if z <= 0:
            raise MBSError(f"--z must be positive pixels, got {z}")
        return float(z), None
    k = 1.0 if k is None else float(k)
    if k <= 0:
        raise MBSError(f"--k must be positive, got {k}")
    return k * L, k


def rf_boundary(layers: Sequence[LayerFacts], z: float) -> int | None:
    """``⌈z⌉_RF``: the smallest finite RF above z, or None when none exceeds z."""
    above = [l.rf for l in layers if l.rf is not None and l.rf > z]
    return min(above) if above else None


def macroblock_betas(layers: Sequence[LayerFacts], boundary: int | None, count: int) -> tuple[MacroblockPlan, ...]:
    """Algorithm 1, lines 8-26, with E_base restricted to m_0..m_i (docs/algorithm.md §6)."""
    e = np.array([l.p_nonzero * l.flops for l in layers], dtype=np.float64)
    mb = np.array([-1 if l.macroblock is None else l.macroblock for l in layers])
    base = np.array([boundary is None or (l.rf is not None and l.rf <= boundary) for l in layers])
    plans = []
    for i in range(count):
        upto = (mb >= 0) & (mb <= i)
        e_total, e_base = float(e[upto].sum()), float(e[upto & base].sum())
        if e_total > e_base:
            r = 1.0 - e_base / e_total
            beta = 1.0 / (1.0 + r)
        else:
            r, beta = 0.0, 1.0
        plans.append(MacroblockPlan(index=i, e_total=e_total, e_base=e_base, redundancy=r, beta=beta))
    return tuple(plans)


def compact_width(channels: int, beta: float, *, round_to: int = 1, multiple_of: int = 1) -> int:
    """``⌈β·C⌉`` rounded up to a multiple of lcm(round_to, multiple_of), never above C."""
    step = math.lcm(max(round_to, 1), max(multiple_of, 1))
    width = math.ceil(beta * channels - 1e-9)
    width = -(-width // step) * step
    return channels if width >= channels else max(width, step)


def group_plans(groups: Sequence[GroupFacts], layers: Sequence[LayerFacts], betas: Sequence[MacroblockPlan],
                *, round_to: int = 1) -> tuple[GroupPlan, ...]:
    """A group takes the largest β among its producers' macroblocks; frozen groups and groups
    without a producer in any macroblock keep β = 1."""
    where = {l.name: l.macroblock for l in layers}
    plans = []
    for g in groups:
        mbs = [where[p] for p in g.producers if where.get(p) is not None]
        beta = 1.0 if g.frozen or not mbs else max(betas[i].beta for i in mbs)
        width = compact_width(g.channels, beta, round_to=round_to, multiple_of=g.multiple_of)
        plans.append(GroupPlan(id=g.id, channels=g.channels, compact_channels=width, beta=beta, frozen=g.frozen))
    return tuple(plans)


def compact_params(params: Sequence[ParamSpec], widths: Mapping[int, int]) -> int:
    """Parameters of the compact file: a tensor shared by uses that need different cuts is stored once per cut."""
    stored: dict[str, set] = {}
    total = 0
    for p in params:
        key = p.cut_key(widths)
        if p.is_param and key not in stored.setdefault(p.name, set()):
            stored[p.name].add(key)
            total += p.compact_size(widths)
    return total


def summarize(params: Sequence[ParamSpec], widths: Mapping[int, int]) -> Summary:
    counted = [p for p in params if p.is_param and not p.copy]
    terms = [p for p in params if p.macs_per_element]
    return Summary(
        params=sum(p.size for p in counted),
        params_compact=compact_params(params, widths),
        flops=sum(p.size * p.macs_per_element for p in terms),
        flops_compact=sum(p.compact_size(widths) * p.macs_per_element for p in terms))


def plan(layers: Sequence[LayerFacts], groups: Sequence[GroupFacts], params: Sequence[ParamSpec], *,
         L: int, macroblocks: int, k: float | None = None, z: float | None = None,  # noqa: N803
         round_to: int = 1) -> Plan:
    """Run Algorithm 1 and the coupling rules; predict the compact model's params and MACs."""
    if round_to < 1:
        raise MBSError(f"--round-to must be >= 1, got {round_to}")
    z_px, k_used = threshold(L, k=k, z=z)
    boundary = rf_boundary(layers, z_px)
    betas = macroblock_betas(layers, boundary, macroblocks)
    gplans = group_plans(groups, layers, betas, round_to=round_to)
    base = {l.name: boundary is None or (l.rf is not None and l.rf <= boundary) for l in layers}
    summary = summarize(params, {g.id: g.compact_channels for g in gplans})
    return Plan(z=z_px, k=k_used, rf_boundary=boundary, base=base, macroblocks=betas, groups=gplans,
                summary=summary)
