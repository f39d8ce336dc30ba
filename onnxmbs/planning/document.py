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

from onnxmbs.graph.analysis import Analysis
from onnxmbs.errors import MBSError
from onnxmbs.files import read_document, write_atomic, write_json
from onnxmbs.planning.facts import LayerFacts
from onnxmbs.planning.planner import Plan

SCHEMA = "onnxmbs.plan/1"


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
        "statistic": tap.statistic if tap else None,
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
