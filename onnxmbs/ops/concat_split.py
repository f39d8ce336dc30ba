"""Concat lays the groups of its inputs side by side along the channel axis; Split and Slice along the
channel axis give each output its range of the channels (:mod:`onnxmbs.graph.slicing` reads the ranges),
along another axis they keep them."""
from __future__ import annotations

from onnxmbs.ops.rules import NO_MACS, NO_PARAMS, NO_SPEC, NO_SURGERY, NOT_ACTIVATION, NOT_GATE, STOPS_WALK, OpRules

_BASE = dict(rf="pass", macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE, spec=NO_SPEC,
             fit="channelwise")

RULES = (
    OpRules("Concat", channels="concat", tap_walk="concat", index="concat", surgery=NO_SURGERY, **_BASE),
    *(OpRules(op, channels="split", tap_walk=STOPS_WALK, index="split", surgery="split", **_BASE)
      for op in ("Split", "Slice")),
)
