"""Pooling: windowed pools grow the receptive field, global pools make it infinite; channels pass."""
from __future__ import annotations

from onnxmbs.ops.rules import (MIXES, NO_MACS, NO_PARAMS, NO_SPEC, NO_SURGERY, NOT_ACTIVATION, NOT_GATE, STOPS_WALK,
                               OpRules)

_POOL = dict(channels="first", macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE,
             tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY, index="join")

RULES = (
    *(OpRules(op, rf="pool", fit="channelwise", **_POOL) for op in ("MaxPool", "AveragePool", "LpPool")),
    *(OpRules(op, rf="global", fit="channelwise", **_POOL) for op in ("GlobalAveragePool", "GlobalMaxPool")),
    OpRules("GlobalLpPool", rf="global", fit=MIXES, **_POOL),
)
