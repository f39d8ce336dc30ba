"""The handbook as a table: terminal text, Markdown, CSV, JSON, and an HTML page with the Figure 5 curve.

One row per k: the plan's RF boundary, β per macroblock and compact widths, predicted params
and MACs, MBS accuracy mean ± std over seeds; with uniform scaling, its α, params and accuracy
beside it and the paired difference MBS − uniform with its 95 % confidence interval.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from html import escape

from onnxmbs.handbook.record import Handbook, Paired, Row, Stat
from onnxmbs.reports import plots
from onnxmbs.reports.markup import CSS, html_table, md_table
from onnxmbs.reports.text import table

HEADERS = ("k", "RF boundary", "β per macroblock", "configuration", "params", "MACs", "MBS accuracy",
           "uniform α", "uniform params", "uniform accuracy", "MBS − uniform (95% CI)")
CSV_COLUMNS = ("k", "rf_boundary", "beta", "configuration", "params", "flops", "mbs_mean", "mbs_std", "mbs_n",
               "alpha", "uniform_params", "uniform_mean", "uniform_std", "uniform_n", "difference",
               "difference_low", "difference_high")


def _stat(stat: Stat | None, *, percent: bool = True) -> str:
    if stat is None:
        return "-"
    if not percent:  # a user metric, in its own units
        return f"{stat.mean:.4f}" if stat.n == 1 else f"{stat.mean:.4f} ± {stat.std:.4f} ({stat.n})"
    return f"{100 * stat.mean:.2f}%" if stat.n == 1 else f"{100 * stat.mean:.2f} ± {100 * stat.std:.2f}% ({stat.n})"


def _paired(diff: Paired | None, *, percent: bool = True) -> str:
    if diff is None:
        return "-"
    if not percent:
        return f"{diff.mean:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] ({diff.n})"
    return f"{100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}] pts ({diff.n})"


def _headers(book: Handbook) -> tuple[str, ...]:
    """The table's headers: "accuracy" columns are "score" columns under a user metric."""
    if book.settings.metric is None:
        return HEADERS
    return tuple(h.replace("accuracy", "score") for h in HEADERS)


def _config(configuration: Sequence[Sequence[int]]) -> str:
    return " / ".join(",".join(str(w) for w in ws) for ws in configuration)


def _cells(row: Row, *, percent: bool = True) -> tuple:
    p = row.point
    return (f"{p.k:g}", p.rf_boundary if p.rf_boundary is not None else "none",
            " ".join(f"{b:.3f}" for b in p.beta), _config(p.configuration), f"{p.params:,}", f"{p.flops:,}",
            _stat(row.mbs, percent=percent), "-" if p.alpha is None else f"{p.alpha:.4f}",
            "-" if p.uniform_params is None else f"{p.uniform_params:,}", _stat(row.uniform, percent=percent),
            _paired(row.difference, percent=percent))


def _rows(book: Handbook) -> list[tuple]:
    percent = book.settings.metric is None
    return [_cells(r, percent=percent) for r in book.rows()]


def _caption(book: Handbook) -> str:
    st = book.settings
    original = book.original()
    what = "accuracy" if st.metric is None else "score"
    scored = "" if st.metric is None else f"; scored by {st.metric}"
    return (f"{st.model} ({st.source}, {st.framework}); init {st.init}, {st.train.get('epochs')} epochs, "
            f"{st.seeds} seed(s); original {book.params:,} params, {book.flops:,} MACs"
            + (f", {what} {_stat(original, percent=st.metric is None)}" if original else "")
            + f"; {len(book.runs)} runs{scored}")


def _pooled(book: Handbook) -> str:
    """One line under the table: MBS − uniform over all k (empty without uniform runs at several k)."""
    pooled = book.pooled()
    percent = book.settings.metric is None
    return "" if pooled is None else f"MBS − uniform over all k (seed-paired, 95% CI): {_paired(pooled, percent=percent)}"


def handbook_text(book: Handbook) -> str:
    lines = [_caption(book), table(_headers(book), _rows(book)), _pooled(book)]
    return "\n".join(line for line in lines if line)


def handbook_markdown(book: Handbook, *, title: str = "# onnxmbs handbook") -> str:
    """The handbook in Markdown: ``title``, the caption, the table and the pooled difference."""
    pooled = _pooled(book)
    return "\n".join([title, "", _caption(book), "", md_table(_headers(book), _rows(book)),
                      *(["", pooled] if pooled else [])])


def to_markdown(book: Handbook) -> str:
    return handbook_markdown(book) + "\n"


def _csv_row(row: Row) -> dict:
    p, m, u, d = row.point, row.mbs, row.uniform, row.difference
    return {"k": p.k, "rf_boundary": p.rf_boundary, "beta": " ".join(f"{b:.6f}" for b in p.beta),
            "configuration": _config(p.configuration), "params": p.params, "flops": p.flops,
            "mbs_mean": m and m.mean, "mbs_std": m and m.std, "mbs_n": m and m.n, "alpha": p.alpha,
            "uniform_params": p.uniform_params, "uniform_mean": u and u.mean, "uniform_std": u and u.std,
            "uniform_n": u and u.n, "difference": d and d.mean, "difference_low": d and d.low,
            "difference_high": d and d.high}


def to_csv(book: Handbook) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_row(r) for r in book.rows())
    return buf.getvalue()


def to_json(book: Handbook) -> str:
    return json.dumps(book.to_json(), indent=1) + "\n"


def figure(book: Handbook) -> str:
    """The paper's Figure 5: accuracy vs params, MBS and uniform, ± std error bars."""
    rows = book.rows()
    series = [plots.Series("MBS", plots.BLUE, tuple((r.point.params, r.mbs.mean, r.mbs.std) for r in rows if r.mbs))]
    uniform = tuple((r.point.uniform_params, r.uniform.mean, r.uniform.std) for r in rows if r.uniform)
    if uniform:
        series.append(plots.Series("uniform", plots.ORANGE, uniform))
    original = book.original()
    reference = (book.params, original.mean, original.std) if original else None
    return plots.accuracy_curve(series, reference=reference)


def handbook_html(book: Handbook, *, title: str = "onnxmbs handbook", heading: str = "h1") -> str:
    """The handbook as an HTML section: caption, the Figure 5 chart, the table and the pooled difference."""
    pooled = _pooled(book)
    return (f"<section><{heading}>{escape(title)}</{heading}><p class=\"meta\">{escape(_caption(book))}</p>"
            f"<div class=\"charts\">{figure(book)}</div>{html_table(_headers(book), _rows(book))}"
            + (f"<p>{escape(pooled)}</p>" if pooled else "") + "</section>")


def to_html(book: Handbook) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>onnxmbs handbook</title><style>{CSS}</style></head><body>{handbook_html(book)}</body></html>\n")
