"""Normalisations: BatchNorm and InstanceNorm are per channel (cut with their channels); the others freeze them."""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, MIXES, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_SPEC, NO_SURGERY, NOT_ACTIVATION,
                               NOT_GATE, STOPS_WALK, OpRules, Params)

_NORM = dict(rf="pass", macs=NO_MACS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE)

RULES = (
    OpRules("BatchNormalization", channels="first", params=Params((1, 2)), tap_walk="through", spec="batchnorm",
            surgery="batchnorm", fit="channelwise", index="join", **_NORM),
    OpRules("InstanceNormalization", channels="first", params=NO_PARAMS, tap_walk=STOPS_WALK, spec=NO_SPEC,
            surgery="norm", fit="channelwise", index="join", **_NORM),
    # LayerNorm's and GroupNorm's scale and bias are learnable (ConvNeXt, ViT); counted, never resized
    *(OpRules(op, channels=FROZEN, params=Params((1, 2)), tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY,
              fit=MIXES, index=NO_CHANNELS, **_NORM)
      for op in ("LayerNormalization", "GroupNormalization")),
    OpRules("LRN", channels=FROZEN, params=NO_PARAMS, tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY, fit=MIXES,
            index=NO_CHANNELS, **_NORM),
)
