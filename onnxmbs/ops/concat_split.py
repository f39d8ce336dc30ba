"""Concat lays the groups of its inputs side by side along the channel axis; Split and Slice keep channels
only when they cut another axis."""
from __future__ import annotations

from onnxmbs.ops.rules import NO_MACS, NO_PARAMS, NO_SPEC, NO_SURGERY, NOT_ACTIVATION, NOT_GATE, STOPS_WALK, OpRules

_BASE = dict(rf="pass", macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE, spec=NO_SPEC,
             surgery=NO_SURGERY, fit="channelwise")

RULES = (
    OpRules("Concat", channels="concat", tap_walk="concat", index="concat", **_BASE),
    *(OpRules(op, channels="slice", tap_walk=STOPS_WALK, index="join", **_BASE) for op in ("Split", "Slice")),
)
