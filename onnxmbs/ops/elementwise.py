"""Element-wise ops: binary ones tie the channels of their inputs; per-channel constants follow them."""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, MIXES, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_SPEC, NO_SURGERY, NOT_ACTIVATION,
                               NOT_GATE, STOPS_WALK, OpRules, Params)

# Add/Sub/Mul/Div: affine with one constant operand (tf2onnx's unfused BatchNorm, scalings inside a gate)
_AFFINE = dict(rf="pass", channels="join", macs=NO_MACS, tap_gate="affine", tap_walk="affine", spec="channelwise",
               surgery="elementwise", fit="channelwise", index="join")
_JOIN = dict(rf="pass", channels="join", macs=NO_MACS, params=NO_PARAMS, tap_gate=NOT_GATE, tap_walk=STOPS_WALK,
             spec=NO_SPEC, surgery="elementwise", fit="channelwise", index="join")
_UNARY = dict(rf="pass", channels="first", macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE,
              spec=NO_SPEC, surgery=NO_SURGERY, fit="channelwise", index="join")
_UNMAPPED = dict(rf="pass", channels=FROZEN, macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE,
                 tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY, fit=MIXES, index=NO_CHANNELS)

RULES = (
    *(OpRules(op, params=Params((0, 1), vectors_only=True), tap=NOT_ACTIVATION, **_AFFINE) for op in ("Add", "Sub")),
    OpRules("Mul", params=Params((0, 1), vectors_only=True), tap="gated", **_AFFINE),  # Mul(x, gate(x)): SiLU, ...
    OpRules("Div", params=Params((1,), vectors_only=True), tap=NOT_ACTIVATION, **_AFFINE),
    OpRules("Max", tap="max", **_JOIN),  # Max(x, 0) is a ReLU
    *(OpRules(op, tap=NOT_ACTIVATION, **_JOIN) for op in ("Min", "Sum", "Mean", "Where", "Pow")),
    *(OpRules(op, tap_walk=STOPS_WALK, **_UNARY) for op in ("Sqrt", "Neg", "Abs", "Exp", "Reciprocal", "Dropout",
                                                            "Cast")),
    OpRules("Identity", tap_walk="through", **_UNARY),
    *(OpRules(op, **_UNMAPPED) for op in ("Log", "Floor", "Ceil", "Round", "Not", "And", "Or", "Greater", "Less",
                                          "Equal", "QuantizeLinear", "DequantizeLinear")),
)
