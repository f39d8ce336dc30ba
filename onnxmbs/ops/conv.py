"""Convolutions: Conv is what MBS scales; the other convolution ops are counted or left alone."""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_RF, NO_SPEC, NO_SURGERY, NOT_ACTIVATION,
                               NOT_GATE, STOPS_WALK, OpRules, Params)

_UNSUPPORTED = dict(rf=NO_RF, channels=FROZEN, tap=NOT_ACTIVATION, tap_gate=NOT_GATE, tap_walk=STOPS_WALK,
                    spec=NO_SPEC, surgery=NO_SURGERY, fit="weighted", index=NO_CHANNELS)

RULES = (
    OpRules("Conv", rf="conv", channels="conv", macs="conv", params=Params((1, 2)), tap=NOT_ACTIVATION,
            tap_gate=NOT_GATE, tap_walk=STOPS_WALK, spec="conv", surgery="conv", fit="linear", index="produce"),
    OpRules("ConvTranspose", macs="conv_transpose", params=Params((1, 2)), **_UNSUPPORTED),
    *(OpRules(op, macs=NO_MACS, params=NO_PARAMS, **_UNSUPPORTED) for op in ("ConvInteger", "QLinearConv")),
)
