"""Matrix products: Gemm and MatMul mix channels and start new groups (classifiers, channels-last Linear)."""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_RF, NO_SPEC, NO_SURGERY, NOT_ACTIVATION,
                               NOT_GATE, STOPS_WALK, OpRules, Params)

_LINEAR = dict(channels="mixer", macs="matmul", tap=NOT_ACTIVATION, tap_gate=NOT_GATE, tap_walk=STOPS_WALK,
               spec="matmul", surgery="gemm", fit="linear", index="produce")
_UNSUPPORTED = dict(rf=NO_RF, channels=FROZEN, macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE,
                    tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY, fit="weighted", index=NO_CHANNELS)

RULES = (
    OpRules("Gemm", rf="global", params=Params((1, 2)), **_LINEAR),
    OpRules("MatMul", rf="matmul", params=Params((1,)), **_LINEAR),
    *(OpRules(op, **_UNSUPPORTED) for op in ("MatMulInteger", "QLinearMatMul", "Einsum")),
)
