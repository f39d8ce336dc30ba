"""Recurrent layers: weighted, never resized or re-fitted (a CNN rarely has them)."""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_RF, NO_SPEC, NO_SURGERY, NOT_ACTIVATION,
                               NOT_GATE, STOPS_WALK, OpRules)

RULES = tuple(OpRules(op, rf=NO_RF, channels=FROZEN, macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION,
                      tap_gate=NOT_GATE, tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY, fit="weighted",
                      index=NO_CHANNELS)
              for op in ("LSTM", "GRU", "RNN"))
