"""The CI gate rendered: a terminal table, JUnit XML and GitHub step-summary Markdown.

The verdicts (:class:`CheckResult`, one per model per check) come from
:mod:`onnxmbs.workflow.gate`, which runs the statistics; this module only renders them.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from onnxmbs.reports.text import table
from onnxmbs.workflow.gate import CheckResult, GateLimits

__all__ = ["CheckResult", "GateLimits", "results_text", "junit_xml", "summary_markdown", "append_step_summary"]


# ------------------------------------------------------------ output
def results_text(results: Sequence[CheckResult]) -> str:
    rows = [(r.model, r.check, r.status.upper(), r.message) for r in results]
    failed = sum(not r.passed for r in results)
    verdict = "PASS" if not failed else f"FAIL ({failed} of {len(results)} checks)"
    return table(["model", "check", "result", "details"], rows) + f"\n{verdict}"


def junit_xml(results: Sequence[CheckResult]) -> str:
    """JUnit XML: one testsuite per model, one testcase per check."""
    root = ET.Element("testsuites", name="onnxmbs check", tests=str(len(results)),
                      failures=str(sum(r.status == "fail" for r in results)),
                      errors=str(sum(r.status == "error" for r in results)),
                      time=f"{sum(r.seconds for r in results):.3f}")
    for model in dict.fromkeys(r.model for r in results):
        mine = [r for r in results if r.model == model]
        suite = ET.SubElement(root, "testsuite", name=model, tests=str(len(mine)),
                              failures=str(sum(r.status == "fail" for r in mine)),
                              errors=str(sum(r.status == "error" for r in mine)),
                              time=f"{sum(r.seconds for r in mine):.3f}")
        for r in mine:
            case = ET.SubElement(suite, "testcase", classname=model, name=r.check, time=f"{r.seconds:.3f}")
            if r.status == "pass":
                ET.SubElement(case, "system-out").text = r.message
            else:
                ET.SubElement(case, "failure" if r.status == "fail" else "error", message=r.message,
                              type=r.check).text = r.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def summary_markdown(results: Sequence[CheckResult]) -> str:
    """GitHub step-summary Markdown (appended to $GITHUB_STEP_SUMMARY)."""
    failed = sum(not r.passed for r in results)
    models = len(dict.fromkeys(r.model for r in results))
    head = (f"### onnxmbs check: {'✅ PASS' if not failed else '❌ FAIL'} — {models} model(s), "
            f"{len(results)} check(s), {failed} failed")
    icon = {"pass": "✅", "fail": "❌", "error": "⚠️"}
    rows = [f"| `{r.model}` | {r.check} | {icon[r.status]} {r.status} | {r.message.replace('|', '/')} |"
            for r in results]
    return "\n".join([head, "", "| model | check | result | details |", "|---|---|---|---|", *rows, ""]) + "\n"


def append_step_summary(path: str | Path, results: Sequence[CheckResult]) -> None:
    with open(path, "a", encoding="utf-8") as fh:  # appending: other steps write the same file
        fh.write(summary_markdown(results))
