"""Stage 6a — the plan as JSON (schema ``onnxmbs.plan/1``), written atomically.

Other tools and CI parse this file: the keys of the issue's schema are always present;
extra keys (per-channel statistics, freeze reasons, counts) are additions.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxmbs.analysis import Analysis
from onnxmbs.errors import MBSError
from onnxmbs.facts import LayerFacts
from onnxmbs.planner import Plan

SCHEMA = "onnxmbs.plan/1"


def write_atomic(path: str | Path, text: str | bytes) -> Path:
    """Write to a temporary file beside ``path`` and rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode() if isinstance(text, str) else text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, document: Mapping[str, Any]) -> Path:
    return write_atomic(path, json.dumps(document, indent=1) + "\n")


def read_document(path: str | Path, *, schema: str, what: str, how: str) -> dict[str, Any]:
    """A JSON document of ``schema``; ``what`` names it and ``how`` says how to make one, in errors."""
    path = Path(path)
    if not path.is_file():
        raise MBSError(f"{what} not found: {path} — {how}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MBSError(f"{path} is not valid JSON ({exc}) — {how}") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        raise MBSError(f"{path} is not an {what} (schema {schema!r} expected) — {how}")
    return doc


def read_plan(path: str | Path) -> dict[str, Any]:
    return read_document(path, schema=SCHEMA, what="onnxmbs plan",
                         how=f"create one with `onnxmbs plan MODEL --data ... -o {path}`")


def _layer_entry(conv, facts: LayerFacts, analysis: Analysis, plan: Plan, rates) -> dict[str, Any]:
    tap = analysis.taps[conv.name]
    widths = plan.widths()
    entry = {
        "name": conv.name, "macroblock": facts.macroblock, "out_hw": list(conv.out_hw),
        "in_channels": conv.in_channels, "out_channels": conv.out_channels, "groups": conv.groups,
        "kernel": list(conv.kernel), "stride": list(conv.stride), "dilation": list(conv.dilation),
        "rf": conv.rf, "flops": conv.flops, "params": conv.params,
        "activation": tap.node if tap else None, "p_nonzero": facts.p_nonzero, "measured": tap is not None,
        "base": plan.base[conv.name], "group": facts.group,
        "compact_out_channels": sum(widths[g] for g in facts.output_groups or (facts.group,)),
        "output_groups": list(facts.output_groups or (facts.group,)),
        "input_groups": list(analysis.channels.conv_input_groups.get(conv.name, ())),
    }
    if rates is not None:
        entry["channel_p_nonzero"] = [round(float(r), 6) for r in rates]
    return entry


def plan_document(analysis: Analysis, facts: list[LayerFacts], plan: Plan, *, settings: Mapping[str, Any],
                  channel_rates: Mapping[str, Any]) -> dict[str, Any]:
    """The plan JSON: model, settings, layers, macroblocks, groups, summary."""
    loaded = analysis.loaded
    layers = [_layer_entry(c, f, analysis, plan, channel_rates.get(c.name)) for c, f in zip(analysis.layers, facts)]
    blocks = [{"index": mb.index, "level": mb.level, "out_hw": list(mb.out_hw), "layers": list(mb.layers),
               "e_total": p.e_total, "e_base": p.e_base, "redundancy": p.redundancy, "beta": p.beta}
              for mb, p in zip(analysis.macroblocks, plan.macroblocks)]
    info = {g.id: g for g in analysis.channels.groups}
    groups = [{"id": g.id, "channels": g.channels, "compact_channels": g.compact_channels, "beta": g.beta,
               "frozen": g.frozen, "producers": list(info[g.id].producers), "followers": list(info[g.id].followers),
               "multiple_of": info[g.id].multiple_of} for g in plan.groups]
    s = plan.summary
    return {
        "schema": SCHEMA,
        "model": {"path": loaded.path, "sha256": loaded.sha256, "input": loaded.input.name,
                  "shape": list(loaded.input.shape), "layout": loaded.input.layout, "L": loaded.input.L},
        "settings": {"k": plan.k, "z": plan.z, "rf_boundary": plan.rf_boundary, **settings},
        "layers": layers, "macroblocks": blocks, "groups": groups,
        "summary": {"params": s.params, "params_compact": s.params_compact, "param_reduction": s.param_reduction,
                    "flops": s.flops, "flops_compact": s.flops_compact, "flop_reduction": s.flop_reduction,
                    "model_params": analysis.shapes.params, "model_flops": analysis.shapes.flops,
                    "unknown_ops": dict(analysis.shapes.unknown_ops)},
    }
