"""Resize / Upsample: the jump shrinks by the scale factor; channels pass through unchanged."""
from __future__ import annotations

from onnxmbs.ops.rules import NO_MACS, NO_PARAMS, NO_SPEC, NO_SURGERY, NOT_ACTIVATION, NOT_GATE, STOPS_WALK, OpRules

RULES = tuple(OpRules(op, rf="resize", channels="first", macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION,
                      tap_gate=NOT_GATE, tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY, fit="channelwise",
                      index="join")
              for op in ("Resize", "Upsample"))
