"""Reductions: over the spatial axes they are a global pool, over the channel axis they mix channels."""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_RF, NO_SPEC, NO_SURGERY, NOT_ACTIVATION,
                               NOT_GATE, STOPS_WALK, OpRules)

_REDUCE = dict(macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE, tap_walk=STOPS_WALK,
               spec=NO_SPEC, surgery=NO_SURGERY, fit="reduce")

RULES = (
    *(OpRules(op, rf="reduce", channels="reduce", index="join", **_REDUCE)
      for op in ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2")),
    *(OpRules(op, rf=NO_RF, channels=FROZEN, index=NO_CHANNELS, **_REDUCE) for op in ("ReduceL1", "ReduceProd")),
)
