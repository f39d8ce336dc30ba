"""Hand-written SVG charts for reports: no matplotlib, no JavaScript, no network.

Each function takes plain plan-document pieces (dicts) and returns one ``<svg>`` element
as a string, self-contained (presentation attributes, no external CSS), with ``<title>``
tooltips on the marks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from onnxmbs.planning.document import LayerRecord, MacroblockRecord
from onnxmbs.planning.sweep import SweepPoint
from onnxmbs.units import human

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
BLUE, ORANGE, GREY, RED, INK, GRID = "#2b6cb0", "#dd6b20", "#a0aec0", "#c53030", "#2d3748", "#e2e8f0"
SHADES = ("#ebf4ff", "#fffaf0", "#f0fff4", "#faf5ff", "#fff5f5", "#e6fffa", "#fefcbf")


@dataclass(frozen=True)
class Frame:
    """Data ranges mapped onto a plot area inside a ``width × height`` canvas."""
    width: int
    height: int
    x0: float
    x1: float
    y0: float
    y1: float
    left: int = 56
    right: int = 18
    top: int = 34
    bottom: int = 46

    def x(self, v: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return round(self.left + (v - self.x0) / span * (self.width - self.left - self.right), 2)

    def y(self, v: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return round(self.height - self.bottom - (v - self.y0) / span * (self.height - self.top - self.bottom), 2)

    @property
    def plot_top(self) -> int:
        return self.top

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom


def _open(frame: Frame, title: str, label: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{escape(label)}" '
            f'width="{frame.width}" height="{frame.height}" viewBox="0 0 {frame.width} {frame.height}" '
            f'font-family="{escape(FONT)}" font-size="11" fill="{INK}">',
            f"<title>{escape(label)}</title>",
            f'<rect width="{frame.width}" height="{frame.height}" fill="#ffffff"/>',
            f'<text x="{frame.left}" y="18" font-size="13" font-weight="600">{escape(title)}</text>']


def _text(x: float, y: float, text: str, *, anchor: str = "middle", size: int = 11, fill: str = INK,
          extra: str = "") -> str:
    return (f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"{extra}>'
            f"{escape(text)}</text>")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _axes(frame: Frame, xticks: Sequence[tuple[float, str]], yticks: Sequence[tuple[float, str]],
          xlabel: str, ylabel: str) -> list[str]:
    out = []
    for v, label in yticks:
        y = frame.y(v)
        out.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y}" y2="{y}" stroke="{GRID}"/>')
        out.append(_text(frame.left - 6, y + 4, label, anchor="end"))
    for v, label in xticks:
        out.append(_text(frame.x(v), frame.plot_bottom + 15, label))
    out.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{frame.plot_bottom}" '
               f'y2="{frame.plot_bottom}" stroke="{INK}"/>')
    out.append(_text((frame.left + frame.width - frame.right) / 2, frame.height - 8, xlabel))
    cy = (frame.plot_top + frame.plot_bottom) / 2
    out.append(_text(14, cy, ylabel, extra=f' transform="rotate(-90 14 {cy})"'))
    return out


def _legend(frame: Frame, items: Sequence[tuple[str, str, str]]) -> list[str]:
    """items: (kind 'line'|'dot'|'hollow'|'dash', colour, label), right-aligned in the title row."""
    out, x = [], frame.width - frame.right
    for kind, colour, label in reversed(items):
        x -= 7 * len(label) + 26
        mark = {"line": f'<line x1="{x}" x2="{x + 14}" y1="14" y2="14" stroke="{colour}" stroke-width="2.5"/>',
                "dash": f'<line x1="{x}" x2="{x + 14}" y1="14" y2="14" stroke="{colour}" stroke-width="2" '
                        'stroke-dasharray="4 3"/>',
                "dot": f'<circle cx="{x + 7}" cy="14" r="4" fill="{colour}"/>',
                "hollow": f'<circle cx="{x + 7}" cy="14" r="4" fill="#fff" stroke="{colour}" stroke-width="1.5"/>'}
        out += [mark[kind], _text(x + 18, 18, label, anchor="start")]
    return out


# ------------------------------------------------------------ p along depth
def _layer_mark(frame: Frame, i: int, layer: LayerRecord) -> str:
    x, y = frame.x(i), frame.y(float(layer.p_nonzero))
    tip = escape(f"{layer.name}: p={float(layer.p_nonzero):.3f}, RF {layer.rf or 'inf'}, "
                 f"macroblock {layer.macroblock if layer.macroblock is not None else '-'}, "
                 f"{'base' if layer.base else 'enhancement'}{'' if layer.measured else ', not measured'}")
    if not layer.measured:
        return (f'<circle cx="{x}" cy="{y}" r="3.5" fill="#fff" stroke="{GREY}" stroke-width="1.5">'
                f"<title>{tip}</title></circle>")
    colour = BLUE if layer.base else ORANGE
    return f'<circle cx="{x}" cy="{y}" r="3.5" fill="{colour}"><title>{tip}</title></circle>'


def _macroblock_bands(frame: Frame, layers: Sequence[LayerRecord]) -> list[str]:
    """A shaded column per macroblock run along depth, labelled with its index and resolution."""
    out, start = [], 0
    for i in range(1, len(layers) + 1):
        mb = layers[start].macroblock
        if i < len(layers) and layers[i].macroblock == mb:
            continue
        if mb is not None:
            x0, x1 = frame.x(start + 0.5), frame.x(i + 0.5)
            hw = layers[start].out_hw
            out.append(f'<rect x="{x0}" y="{frame.plot_top}" width="{round(x1 - x0, 2)}" '
                       f'height="{frame.plot_bottom - frame.plot_top}" fill="{SHADES[mb % len(SHADES)]}"/>')
            label = next((t for t in (f"m{mb} {hw[0]}×{hw[1]}", f"m{mb}") if 6 * len(t) + 4 <= x1 - x0), None)
            if label:
                out.append(_text((x0 + x1) / 2, frame.plot_bottom - 6, label, size=10, fill="#4a5568"))
        start = i
    return out


def depth_profile(layers: Sequence[LayerRecord], *, rf_boundary: int | None, z: float | None = None,
                  width: int = 980, height: int = 260) -> str:
    """Non-zero probability p of every conv's activation along depth, macroblocks shaded,
    base (blue) vs enhancement (orange) layers, the RF boundary as a red dashed line."""
    n = len(layers)
    frame = Frame(width, height, 0.5, n + 0.5, 0.0, 1.05)
    out = _open(frame, "Non-zero probability p along depth", f"p along depth for {n} conv layers")
    out += _macroblock_bands(frame, layers)
    step = max(1, math.ceil(n / 20))
    out += _axes(frame, [(i, str(i)) for i in range(1, n + 1, step)],
                 [(v, f"{v:g}") for v in nice_ticks(0, 1, 5)], "conv layer (depth order)", "p non-zero")
    first_enh = next((i for i, l in enumerate(layers, 1) if not l.base), None)
    if rf_boundary is not None and first_enh is not None:
        x = frame.x(first_enh - 0.5)
        label = f"RF boundary {rf_boundary}px" + (f" (z={z:g})" if z is not None else "")
        out.append(f'<line x1="{x}" x2="{x}" y1="{frame.plot_top}" y2="{frame.plot_bottom}" stroke="{RED}" '
                   'stroke-width="2" stroke-dasharray="6 4" class="rf-boundary"/>')
        right = x + 7 * len(label) < frame.width - frame.right  # room for the label right of the line?
        out.append(_text(x + 4 if right else x - 4, frame.plot_top + 26, label, anchor="start" if right else "end",
                         fill=RED))
    measured = [(i, l) for i, l in enumerate(layers, 1) if l.measured]
    path = " ".join(f"{'L' if j else 'M'}{frame.x(i)},{frame.y(l.p_nonzero)}"
                    for j, (i, l) in enumerate(measured))
    if measured:
        out.append(f'<path d="{path}" fill="none" stroke="{GREY}" stroke-width="1"/>')
    out += [_layer_mark(frame, i, l) for i, l in enumerate(layers, 1)]
    out += _legend(frame, [("dot", BLUE, "base"), ("dot", ORANGE, "enhancement"), ("hollow", GREY, "not measured"),
                           ("dash", RED, "RF boundary")])
    return "\n".join(out + ["</svg>"])


# ------------------------------------------------------------ beta per macroblock
def beta_bars(macroblocks: Sequence[MacroblockRecord], *, width: int = 480, height: int = 250) -> str:
    """β per macroblock as bars on [0, 1] with the value on top (β = 1: kept, lower: scaled)."""
    n = len(macroblocks)
    frame = Frame(width, height, -0.5, n - 0.5, 0.0, 1.1)
    out = _open(frame, "Width multiplier β per macroblock", f"beta for {n} macroblocks")
    out += _axes(frame, [(i, f"m{m.index} {m.out_hw[0]}×{m.out_hw[1]}") for i, m in enumerate(macroblocks)],
                 [(v, f"{v:g}") for v in nice_ticks(0, 1, 5)], "macroblock (resolution)", "β")
    bar = min(60.0, (frame.x(1) - frame.x(0)) * 0.6) if n > 1 else 60.0
    for i, m in enumerate(macroblocks):
        beta = float(m.beta)
        x, y = frame.x(i) - bar / 2, frame.y(beta)
        colour = BLUE if beta >= 1 - 1e-12 else ORANGE
        tip = escape(f"m{m.index}: beta={beta:.4f}, r={float(m.redundancy):.4f}")
        out.append(f'<rect class="bar" x="{round(x, 2)}" y="{y}" width="{round(bar, 2)}" '
                   f'height="{round(frame.plot_bottom - y, 2)}" fill="{colour}"><title>{tip}</title></rect>')
        out.append(_text(frame.x(i), y - 4, f"{beta:.3f}", size=10))
    out += _legend(frame, [("dot", BLUE, "kept"), ("dot", ORANGE, "scaled")])
    return "\n".join(out + ["</svg>"])


# ------------------------------------------------------------ the k trade-off
def _step_path(frame: Frame, points: Sequence[SweepPoint], key: str, x_end: float) -> str:
    parts = []
    for i, p in enumerate(points):
        y = frame.y(100 * float(getattr(p, key)))
        parts.append(f"M{frame.x(float(p.k))},{y}" if i == 0 else f"V{y}")
        nxt = float(points[i + 1].k) if i + 1 < len(points) else x_end
        parts.append(f"H{frame.x(nxt)}")
    return " ".join(parts)


def tradeoff_curve(curve: Sequence[SweepPoint], *, marks: Sequence[SweepPoint] = (),
                   chosen_k: float | None = None, width: int = 480, height: int = 250) -> str:
    """Param and MAC reduction (%) versus k: exact steps from ``curve`` (sorted by k), dots at ``marks``."""
    points = sorted(curve, key=lambda p: float(p.k))
    if not points:
        return ""
    k0, k1 = float(points[0].k), float(points[-1].k)
    top = max(max(float(p.param_reduction), float(p.flop_reduction)) for p in points) * 100
    top = max(10.0, math.ceil(top / 10) * 10)
    frame = Frame(width, height, k0, k1 if k1 > k0 else k0 + 1, 0.0, top * 1.05)
    out = _open(frame, "Trade-off: reduction vs k (z = k·L)", "parameter and MAC reduction versus k")
    out += _axes(frame, [(v, f"{v:g}") for v in nice_ticks(k0, k1, 6)],
                 [(v, f"{v:g}%") for v in nice_ticks(0, top, 5)], "k", "reduction")
    if chosen_k is not None and k0 <= chosen_k <= k1:
        x = frame.x(chosen_k)
        out.append(f'<line x1="{x}" x2="{x}" y1="{frame.plot_top}" y2="{frame.plot_bottom}" stroke="{INK}" '
                   'stroke-dasharray="2 3"/>')
        out.append(_text(x + 4, frame.plot_top + 12, f"plan k={chosen_k:g}", anchor="start", size=10))
    for key, colour in (("param_reduction", BLUE), ("flop_reduction", ORANGE)):
        out.append(f'<path class="curve" d="{_step_path(frame, points, key, frame.x1)}" fill="none" '
                   f'stroke="{colour}" stroke-width="2.5"/>')
        for m in marks:
            tip = escape(f"k={float(m.k):g}: {100 * float(getattr(m, key)):.2f}%")
            out.append(f'<circle cx="{frame.x(float(m.k))}" cy="{frame.y(100 * float(getattr(m, key)))}" r="3.5" '
                       f'fill="{colour}" stroke="#fff"><title>{tip}</title></circle>')
    out += _legend(frame, [("line", BLUE, "params"), ("line", ORANGE, "MACs")])
    return "\n".join(out + ["</svg>"])


# ------------------------------------------------------------ accuracy vs params (the paper's Figure 5)
@dataclass(frozen=True)
class Series:
    """One curve: (params, mean accuracy, std) per point, drawn with ± std error bars."""
    label: str
    colour: str
    points: tuple[tuple[int, float, float], ...]


def accuracy_curve(series: Sequence[Series], *, reference: tuple[int, float, float] | None = None,
                   width: int = 560, height: int = 300) -> str:
    """Held-out accuracy (%) versus parameters, one line per series with ± std error bars; ``reference``
    (the original model) as a hollow point."""
    every = [p for s in series for p in s.points] + ([reference] if reference else [])
    if not every:
        return ""
    x0, x1 = min(p[0] for p in every), max(p[0] for p in every)
    y0 = min(100 * (p[1] - p[2]) for p in every)
    y1 = max(100 * (p[1] + p[2]) for p in every)
    pad_x, pad_y = (x1 - x0) * 0.05 or max(x0 * 0.05, 1), max((y1 - y0) * 0.1, 0.5)
    frame = Frame(width, height, x0 - pad_x, x1 + pad_x, max(0.0, y0 - pad_y), min(100.0, y1 + pad_y), left=64)
    out = _open(frame, "Accuracy vs parameters", "held-out accuracy versus parameters")  # the legend shares the row
    out += _axes(frame, [(v, human(v)) for v in nice_ticks(frame.x0, frame.x1, 5)],
                 [(v, f"{v:g}%") for v in nice_ticks(frame.y0, frame.y1, 5)], "parameters", "accuracy, mean ± std")
    for s in series:
        pts = sorted(s.points)
        path = " ".join(f"{'L' if i else 'M'}{frame.x(p)},{frame.y(100 * m)}" for i, (p, m, _) in enumerate(pts))
        out.append(f'<path class="curve" d="{path}" fill="none" stroke="{s.colour}" stroke-width="2"/>')
        out += [_error_bar(frame, p, m, sd, s.colour, f"{s.label}: {p:,} params, {100 * m:.2f} ± {100 * sd:.2f}%")
                for p, m, sd in pts]
    items = [("line", s.colour, s.label) for s in series]
    if reference:
        p, m, sd = reference
        out.append(_error_bar(frame, p, m, sd, INK, f"original: {p:,} params, {100 * m:.2f} ± {100 * sd:.2f}%",
                              hollow=True))
        items.append(("hollow", INK, "original"))
    out += _legend(frame, items)
    return "\n".join(out + ["</svg>"])


def _error_bar(frame: Frame, params: int, mean: float, std: float, colour: str, tip: str, *,
               hollow: bool = False) -> str:
    x, lo, hi = frame.x(params), frame.y(100 * (mean - std)), frame.y(100 * (mean + std))
    fill = "#fff" if hollow else colour
    return (f'<g class="point"><title>{escape(tip)}</title>'
            f'<line x1="{x}" x2="{x}" y1="{lo}" y2="{hi}" stroke="{colour}" stroke-width="1.5"/>'
            f'<line x1="{x - 4}" x2="{x + 4}" y1="{lo}" y2="{lo}" stroke="{colour}"/>'
            f'<line x1="{x - 4}" x2="{x + 4}" y1="{hi}" y2="{hi}" stroke="{colour}"/>'
            f'<circle cx="{x}" cy="{frame.y(100 * mean)}" r="4" fill="{fill}" stroke="{colour}" stroke-width="1.5"/>'
            "</g>")


# ------------------------------------------------------------ block pruning
GREEN, PURPLE = "#2f855a", "#6b46c1"
SERIES_COLOURS = (BLUE, ORANGE, GREEN, PURPLE, RED, GREY)


def accuracy_curves(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = "Accuracy vs blocks removed",
                    xlabel: str = "blocks removed", dashed: Sequence[str] = (), width: int = 520,
                    height: int = 270) -> str:
    """Top-1 accuracy (fractions, shown in %) against the number of blocks removed, one line per series."""
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    lo = min(100 * p[1] for p in points)
    lo = max(0.0, math.floor(lo / 10) * 10)
    frame = Frame(width, height, x0, x1 if x1 > x0 else x0 + 1, lo, 100.0)
    out = _open(frame, title, "top-1 accuracy versus blocks removed")
    out += _axes(frame, [(v, f"{v:g}") for v in range(int(x0), int(x1) + 1)],
                 [(v, f"{v:g}%") for v in nice_ticks(lo, 100.0, 5)], xlabel, "top-1 accuracy")
    legend = []
    for (name, pts), colour in zip(series.items(), SERIES_COLOURS):
        pts = sorted(pts)
        path = " ".join(f"{'M' if i == 0 else 'L'}{frame.x(x)},{frame.y(100 * y)}" for i, (x, y) in enumerate(pts))
        dash = ' stroke-dasharray="5 4"' if name in dashed else ""
        out.append(f'<path class="curve" d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for x, y in pts:
            tip = escape(f"{name}: {x:g} removed, {100 * y:.2f}%")
            out.append(f'<circle cx="{frame.x(x)}" cy="{frame.y(100 * y)}" r="3" fill="{colour}" stroke="#fff">'
                       f"<title>{tip}</title></circle>")
        legend.append(("dash" if name in dashed else "line", colour, name))
    out += _legend(frame, legend)
    return "\n".join(out + ["</svg>"])
