"""Activations: where a conv's activation tap is taken, and the gates exporters build activations from.

ReLU-family taps (Relu, Clip with min >= 0) count non-zeros — the paper's statistic; the other
activations count outputs > 0 (``tap="positive"``, the extension). Max(x, 0) and gated Mul
(SiLU, HardSwish, GELU as exported) are registered with the element-wise ops.
"""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, MIXES, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_RF, NO_SPEC, NO_SURGERY,
                               NOT_ACTIVATION, NOT_GATE, STOPS_WALK, OpRules, Params)

_ACT = dict(macs=NO_MACS, tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY)
_MAPPED = dict(rf="pass", channels="first", index="join", params=NO_PARAMS, **_ACT)  # channel-wise, resized
_UNMAPPED = dict(rf=NO_RF, channels=FROZEN, index=NO_CHANNELS, params=NO_PARAMS, **_ACT)  # no rules: freezes

RULES = (
    OpRules("Relu", tap="relu", tap_gate="nonlinear", fit="channelwise", **_MAPPED),
    OpRules("Clip", tap="clip", tap_gate="nonlinear", fit="channelwise", **_MAPPED),  # a tap when min >= 0 (ReLU6)
    *(OpRules(op, tap="positive", tap_gate=NOT_GATE, fit="channelwise", **_MAPPED)
      for op in ("LeakyRelu", "Elu", "Selu", "HardSwish", "Gelu", "Mish")),
    OpRules("PRelu", rf="pass", channels="join", index="join", params=Params((1,)), tap="positive", tap_gate=NOT_GATE,
            macs=NO_MACS, tap_walk=STOPS_WALK, spec="channelwise", surgery="elementwise", fit="channelwise"),
    *(OpRules(op, tap=NOT_ACTIVATION, tap_gate="nonlinear", fit="channelwise", **_MAPPED)
      for op in ("Sigmoid", "HardSigmoid", "Tanh", "Softplus", "Erf")),
    OpRules("Softsign", tap=NOT_ACTIVATION, tap_gate=NOT_GATE, fit=MIXES, **_MAPPED),
    *(OpRules(op, tap=NOT_ACTIVATION, tap_gate=NOT_GATE, fit=MIXES, **_MAPPED) for op in ("Softmax", "LogSoftmax")),
    OpRules("Celu", tap="positive", tap_gate=NOT_GATE, fit="channelwise", **_UNMAPPED),
    *(OpRules(op, tap="positive", tap_gate=NOT_GATE, fit=MIXES, **_UNMAPPED)
      for op in ("FastGelu", "QuickGelu", "BiasGelu", "ThresholdedRelu")),
    OpRules("Swish", rf="pass", channels=FROZEN, index=NO_CHANNELS, params=NO_PARAMS, tap="positive",
            tap_gate=NOT_GATE, fit="channelwise", **_ACT),
)
