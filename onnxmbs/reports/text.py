"""Plain-text tables for the terminal (the CLI prints what these return)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import math

from onnxmbs.graph.analysis import Analysis
from onnxmbs.planning.document import MacroblockWidths, PlanDocument
from onnxmbs.planning.sweep import Solution, SweepPoint
from onnxmbs.stats.stopping import Convergence
from onnxmbs.units import before_after, human


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if is_numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def is_numeric(cell: Any) -> bool:
    """A cell that reads as a number (``1,234``, ``-0.5``, ``12.5%``): right-aligned in every table."""
    if isinstance(cell, (int, float)):
        return True
    return str(cell).replace(".", "", 1).replace("-", "", 1).replace("%", "").replace(",", "").isdigit()


def short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _tap_text(tap) -> str:
    """The activation a conv's statistic is read from; "(>0)" marks the count beyond the paper."""
    if tap is None:
        return "(none)"
    return short(tap.node, 28) + (" (>0)" if tap.statistic == "positive" else "")


def analysis_text(analysis: Analysis) -> str:
    where = analysis.macroblock_of()
    groups = analysis.channels.conv_group
    rows = [(short(c.name), f"{c.out_hw[0]}x{c.out_hw[1]}", c.in_channels, c.out_channels, c.groups,
             f"{c.kernel[0]}x{c.kernel[1]}", c.stride[0], "inf" if c.rf is None else c.rf, human(c.flops),
             human(c.params), where.get(c.name, "-"), groups.get(c.name, "-"),
             _tap_text(analysis.taps[c.name]))
            for c in analysis.layers]
    inp = analysis.loaded.input
    parts = [f"model: {analysis.loaded.path}  input {inp.name} {list(inp.shape)} {inp.layout}  L={inp.L}",
             table(["layer", "out", "in", "out_ch", "g", "k", "s", "RF", "MACs", "params", "mb", "grp", "activation"],
                   rows),
             "", table(["macroblock", "level", "resolution", "layers"],
                       [(mb.index, mb.level, f"{mb.out_hw[0]}x{mb.out_hw[1]}", len(mb.layers))
                        for mb in analysis.macroblocks])]
    frozen = [g for g in analysis.channels.groups if g.frozen]
    if frozen:
        parts += ["", "frozen channel groups (kept at full width):"]
        parts += [f"  group {g.id} ({g.channels} ch): {g.frozen}" for g in frozen]
    if analysis.shapes.unknown_ops:
        ops = ", ".join(f"{op}×{n}" for op, n in sorted(analysis.shapes.unknown_ops.items()))
        parts += ["", f"ops without a receptive-field rule (passed through): {ops}"]
    parts += ["", f"total: {human(analysis.shapes.params)} params, {human(analysis.shapes.flops)} MACs per image, "
                  f"{len(analysis.layers)} conv layers, {len(analysis.macroblocks)} macroblocks"]
    return "\n".join(parts)


def widths_text(widths: MacroblockWidths, arrow: str = "->") -> str:
    """``32,64 -> 30,47``: the distinct widths of a macroblock's convs before and after."""
    return before_after(widths.pairs, arrow)


def macroblock_rows(plan: PlanDocument, *, arrow: str = "->") -> list[tuple]:
    """One row per macroblock: index, resolution, layers, E_total, E_base, r, β, widths (tables and reports)."""
    return [(m.index, f"{m.out_hw[0]}x{m.out_hw[1]}", len(m.layers), human(m.e_total), human(m.e_base),
             f"{m.redundancy:.4f}", f"{m.beta:.4f}", widths_text(w, arrow))
            for m, w in zip(plan.macroblocks, plan.widths())]


def plan_text(plan: PlanDocument) -> str:
    s, st = plan.summary, plan.settings
    k = f"k={st.k:g} " if st.k is not None else ""
    head = (f"{plan.model.path}: {st.images} images{' (SYNTHETIC noise)' if st.synthetic else ''}, "
            f"{k}z={st.z:g}px, RF boundary {st.rf_boundary}, provider {st.provider}")
    unmeasured = sum(1 for l in plan.layers if not l.measured)
    headers, rows = ["mb", "resolution", "layers", "E_total", "E_base", "r", "beta", "widths before -> after"], \
        macroblock_rows(plan)
    entry = plan.convergence.entries[0] if plan.convergence and plan.convergence.entries else None
    if entry is not None:  # --until-converged: β ± its bound
        bounds = {b.index: f"{b.bound:.4f}" for b in entry.macroblocks}
        headers.insert(7, "+/- bound")
        rows = [(*row[:7], bounds.get(row[0], "-"), row[7]) for row in rows]
    lines = [head, table(headers, rows),
             f"params {s.params:,} -> {s.params_compact:,} ({100 * s.param_reduction:.2f}% fewer); "
             f"MACs {human(s.flops)} -> {human(s.flops_compact)} ({100 * s.flop_reduction:.2f}% fewer)"]
    if plan.convergence is not None:
        lines.append(convergence_text(plan.convergence))
    positive = sum(1 for l in plan.layers if l.statistic == "positive")
    if unmeasured:
        lines.append(f"note: {unmeasured} conv layer(s) have no {'ReLU-family ' if st.statistic == 'paper' else ''}"
                     "activation that is counted: p = 1, not measured")
    if positive:
        lines.append(f"note: {positive} conv layer(s) are followed by a non-ReLU activation (SiLU, GELU, HardSwish, ...): "
                     "p counts their outputs > 0 (beyond the paper; --statistic paper gives them p = 1)")
    return "\n".join(lines)


def convergence_text(conv: Convergence) -> str:
    """One line: how a --until-converged pass ended."""
    state = "converged" if conv.converged else "NOT converged"
    if not conv.converged and conv.reason:
        return f"{state} after {conv.images} images ({conv.checkpoint} per checkpoint): {conv.reason}"
    return (f"{state} after {conv.images} images ({conv.checkpoints} checkpoints of {conv.checkpoint}; "
            f"beta bound < tolerance {conv.tolerance:.5f} and widths stable{'' if conv.converged else ': no'})")


def config_text(config: Sequence[Sequence[int]]) -> str:
    """``16 | 30 | 47``: widths per macroblock (several widths of one macroblock joined by '/')."""
    return " | ".join("/".join(str(w) for w in widths) or "-" for widths in config)


def sweep_table(points: Sequence[SweepPoint], *, terminal: bool = True) -> tuple[tuple[str, ...], list[tuple]]:
    """Headers and rows of a k sweep: the terminal's (with z, β to 4 places) or the reports' (β to 3)."""
    headers = ("k", "z", "RF bound", "beta per macroblock") if terminal else ("k", "RF boundary", "β per macroblock")
    digits = 4 if terminal else 3
    rows = [(f"{p.k:g}", *((f"{p.z:g}",) if terminal else ()), p.rf_boundary if p.rf_boundary is not None else "-",
             " ".join(f"{b:.{digits}f}" for b in p.beta), config_text(p.configuration), f"{p.params_compact:,}",
             f"{100 * p.param_reduction:.2f}%", human(p.flops_compact), f"{100 * p.flop_reduction:.2f}%")
            for p in points]
    headers = (*headers, "configuration", "params", "param red.", "MACs", "MAC red.")
    if any(p.round_to != 1 for p in points):  # --round-to N, or auto (the rounding measured fastest per k)
        headers, rows = (*headers, "round-to"), [(*row, p.round_to) for row, p in zip(rows, points)]
    return headers, rows


def sweep_text(points: Sequence[SweepPoint], *, model: str = "", images: int | None = None) -> str:
    first = points[0]
    head = (f"{model}: " if model else "") + (f"{images} images, " if images is not None else "") + \
        f"original configuration {config_text(first.widths)}, {first.params:,} params, {human(first.flops)} MACs"
    return "\n".join([head, table(*sweep_table(points))])


def solution_text(solution: Solution) -> str:
    p = solution.point
    span = (f"every k >= {solution.k_low:.4g}" if math.isinf(solution.k_high)
            else f"every k in [{solution.k_low:.4g}, {solution.k_high:.4g})")
    return (f"target {solution.target.describe()}: largest k = {solution.k:g} ({span} gives this plan, "
            f"RF boundary {p.rf_boundary if p.rf_boundary is not None else 'none'}); achieved "
            f"{solution.target.describe(solution.target.achieved(p))}, configuration {config_text(p.configuration)}, "
            f"params {p.params_compact:,} ({100 * p.param_reduction:.2f}% fewer), "
            f"MACs {human(p.flops_compact)} ({100 * p.flop_reduction:.2f}% fewer)")
