"""``--until-converged``: stop the statistics pass once more images cannot change the plan.

β of macroblock i is ``1 / (2 − R)`` with ``R = E_base / E_total`` over m_0..m_i, and both E
are sums over images, so R is a *ratio estimator*. Each batch of the pass is one unit: a_b
(base effective flops of batch b) and t_b (total). Its standard error from the spread
between batches (batch means, the linearised ratio variance; the units' sizes may differ)
is ``SE(R) = sqrt(n/(n−1) · Σ (a_b − R·t_b)²) / Σ t_b``, and ``SE(β) = β² · SE(R)`` (dβ/dR).
The bound is two standard errors (≈ 95 %). It needs no refitting (a bootstrap would re-plan
hundreds of times per checkpoint) and is exact for the pooled estimate the full pass uses.

At every checkpoint (``checkpoint`` images) the monitor re-plans (milliseconds) and stops
when (a) every macroblock's bound is below ``tolerance`` at every monitored k, and (b) the
compact widths have not changed over the last ``patience`` checkpoints. The default
tolerance is ``0.5 / C_max`` (C_max = the widest scaled channel group): β·C of the widest
layer is then known to within half a channel, so ⌈β·C⌉ can move by at most one channel and
only when β·C sits within that half channel of an integer, which (b) catches.

Batches must be a random sample for the spread to mean anything: ``--until-converged``
reads the data in a fixed pseudo-random order (seeded), so a folder sorted by class does
not converge on its first class; the result is deterministic for a given data set and seed.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.graph.analysis import Analysis
from onnxmbs.planning.gather import group_facts, layer_facts
from onnxmbs.planning.planner import plan, rf_boundary, threshold
from onnxmbs.planning.scaling import param_specs
from onnxmbs.stats.counting import Instrumented
from onnxmbs.stats.stopping import BetaBound, Convergence, ConvergenceEntry

logger = logging.getLogger(__name__)

CHECKPOINT = 256  # images between checkpoints
PATIENCE = 3  # checkpoints with the same widths
MIN_UNITS = 8  # batches before any standard error is trusted
SIGMAS = 2.0  # the bound is this many standard errors


def default_tolerance(analysis: Analysis) -> float:
    """0.5 / C_max: β·C of the widest scaled channel group known to within half a channel."""
    where = analysis.macroblock_of()
    widths = [g.channels for g in analysis.channels.groups
              if not g.frozen and any(where.get(p) is not None for p in g.producers)]
    return 0.5 / max(widths or [1])


class ConvergenceMonitor:
    """Watches the pass batch by batch (a :class:`~onnxmbs.stats.counting.Monitor`)."""

    def __init__(self, analysis: Analysis, *, ks: Sequence[float | None] = (1.0,), z: float | None = None,
                 round_to: int = 1, tolerance: float | None = None, checkpoint: int = CHECKPOINT,
                 patience: int = PATIENCE) -> None:
        if tolerance is not None and not tolerance > 0:
            raise MBSError(f"--tolerance must be positive, got {tolerance}")
        self.facts = layer_facts(analysis, None)
        self.groups, self.specs = group_facts(analysis), param_specs(analysis)
        self.L, self.count = analysis.L, len(analysis.macroblocks)
        self.tolerance = default_tolerance(analysis) if tolerance is None else float(tolerance)
        self.checkpoint, self.patience, self.round_to = max(int(checkpoint), 1), max(int(patience), 1), round_to
        zs = [threshold(self.L, k=k, z=z if k is None else None) for k in (ks or (None,))]
        self.zs = list({rf_boundary(self.facts, zz): (zz, kk) for zz, kk in zs}.values())  # one per boundary
        self.analysis, self.rows, self.sizes = analysis, [], []
        self.images, self.next, self.checkpoints, self.history = 0, self.checkpoint, 0, []
        self.stopped = False
        self.last_bound = math.inf

    def start(self, counting: Instrumented) -> None:
        """Where each conv's channels sit in the counts vector, and how to weigh them."""
        self.cuts, self.scale = [], np.zeros(len(self.facts))
        for i, conv in enumerate(self.analysis.layers):
            tap = self.analysis.taps[conv.name]
            if tap is None or tap.tensor not in counting.slices:
                self.cuts.append(None)
                continue
            cut = counting.slices[tap.tensor]
            stop = cut.stop if tap.stop is None else cut.start + tap.stop
            self.cuts.append((cut.start + tap.start, stop))
            self.scale[i] = 1.0 / (int(counting.per_image[cut.start]) * (stop - cut.start - tap.start))

    def __call__(self, counts: np.ndarray, images: int) -> bool:
        frac = np.array([images if c is None else counts[c[0]:c[1]].sum() * self.scale[i]
                         for i, c in enumerate(self.cuts)], np.float64)  # Σ over the batch of p per image
        self.rows.append(frac)
        self.sizes.append(images)
        self.images += images
        if self.images >= self.next:
            self.next += self.checkpoint
            self._check()
        return self.stopped

    def _check(self) -> None:
        rows = np.asarray(self.rows)
        p = rows.sum(axis=0) / self.images
        facts = [replace(f, p_nonzero=float(q)) for f, q in zip(self.facts, p)]
        widths = tuple(tuple(sorted(plan(facts, self.groups, self.specs, L=self.L, macroblocks=self.count, z=zz,
                                         round_to=self.round_to).widths().items())) for zz, _ in self.zs)
        self.history.append(widths)
        self.checkpoints += 1
        self.last_bound = max((b for zz, _ in self.zs for _, b in self._bounds(rows, zz)), default=0.0)
        stable = len(self.history) >= self.patience and len(set(self.history[-self.patience:])) == 1
        self.stopped = bool(len(self.rows) >= MIN_UNITS and stable and self.last_bound < self.tolerance)
        logger.debug("checkpoint %d: %d images, largest beta bound %.5f, widths stable: %s",
                     self.checkpoints, self.images, self.last_bound, stable)

    def _bounds(self, rows: np.ndarray, z: float) -> list[tuple[float, float]]:
        """(β, bound) per macroblock at threshold z, from the per-batch effective flops."""
        e = rows * np.array([f.flops for f in self.facts], np.float64)
        boundary = rf_boundary(self.facts, z)
        mb = np.array([-1 if f.macroblock is None else f.macroblock for f in self.facts])
        base = np.array([boundary is None or (f.rf is not None and f.rf <= boundary) for f in self.facts])
        out, n = [], len(rows)
        for i in range(self.count):
            upto = (mb >= 0) & (mb <= i)
            a, t = e[:, upto & base].sum(axis=1), e[:, upto].sum(axis=1)
            if t.sum() <= a.sum() or n < 2:
                out.append((1.0, 0.0 if t.sum() <= a.sum() else math.inf))
                continue
            r = a.sum() / t.sum()
            se_r = math.sqrt(n / (n - 1) * float(((a - r * t) ** 2).sum())) / float(t.sum())
            beta = 1.0 / (2.0 - r)
            out.append((beta, SIGMAS * beta * beta * se_r))
        return out

    def result(self) -> Convergence:
        if self.rows and not self.stopped and self.images != self.next - self.checkpoint:
            self._check()  # the data ended between checkpoints: judge what was read
        rows = np.asarray(self.rows) if self.rows else np.zeros((0, len(self.facts)))
        entries = tuple(ConvergenceEntry(k=kk, z=zz, macroblocks=tuple(
            BetaBound(index=i, beta=round(float(b), 6), bound=round(float(e), 6))
            for i, (b, e) in enumerate(self._bounds(rows, zz)))) for zz, kk in self.zs)
        reason = None if self.stopped else self.reason()
        if reason is not None:
            logger.warning("the plan has not converged after %d images: %s", self.images, reason)
        return Convergence(images=self.images, converged=self.stopped, tolerance=self.tolerance,
                           checkpoint=self.checkpoint, checkpoints=self.checkpoints, entries=entries, reason=reason)

    def reason(self) -> str:
        """Why the pass ended unconverged: the one wording the warning, the table and the files share."""
        more = "give more data or raise --max-images"
        if self.checkpoints < self.patience:
            return (f"stopped after {self.checkpoints} of {self.patience} checkpoints: the data ended before the "
                    f"plan could be seen to converge — {more} (or a smaller --checkpoint)")
        if len(self.rows) < MIN_UNITS:
            return (f"stopped after {len(self.rows)} batches: the bound needs at least {MIN_UNITS} — {more} "
                    "(or a smaller --batch-size)")
        if not self.last_bound < self.tolerance:
            return f"the largest beta bound {self.last_bound:.5f} is not below the tolerance {self.tolerance:.5f} — {more}"
        return f"the widths changed within the last {self.patience} checkpoints — {more}"


@dataclass(frozen=True)
class ConvergeOptions:
    """``--until-converged [--tolerance T] [--checkpoint N]`` (tolerance None: 0.5 / C_max)."""
    tolerance: float | None = None
    checkpoint: int = CHECKPOINT

    def monitor(self, analysis: Analysis, *, ks: Sequence[float | None] = (1.0,), z: float | None = None,
                round_to: int = 1) -> ConvergenceMonitor:
        return ConvergenceMonitor(analysis, ks=ks, z=z, round_to=round_to, tolerance=self.tolerance,
                                  checkpoint=self.checkpoint)


def monitor_for(converge: ConvergeOptions | None, analysis: Analysis, **plan: Any) -> ConvergenceMonitor | None:
    return converge.monitor(analysis, **plan) if converge is not None else None
