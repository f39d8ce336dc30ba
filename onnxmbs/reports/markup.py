"""Markdown and HTML building blocks shared by every report (MBS batch report, blocks, handbook):
tables in both markups and the one style sheet of the self-contained HTML pages."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from onnxmbs.reports.text import is_numeric


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#2d3748;margin:24px auto;max-width:1040px;
padding:0 16px;line-height:1.4}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 6px;border-bottom:2px solid #e2e8f0;padding-bottom:4px;
word-break:break-all}
.meta{color:#718096;font-size:13px}
table{border-collapse:collapse;margin:10px 0;font-size:13px}
th,td{border:1px solid #e2e8f0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fff5f5;color:#c53030}
.charts{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0}
.chart{border:1px solid #e2e8f0;border-radius:6px;max-width:100%;height:auto}
.note{color:#975a16;background:#fffff0;border-left:3px solid #d69e2e;padding:4px 8px;margin:4px 0;font-size:13px}
.error{color:#c53030;background:#fff5f5;border-left:3px solid #c53030;padding:6px 10px}
"""


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        cells = "".join(f'<td{" class=num" if is_numeric(c) else ""}>{escape(str(c))}</td>' for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(title: str, body: str) -> str:
    """One self-contained HTML page (the shared CSS inline; no JavaScript, no network)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")
