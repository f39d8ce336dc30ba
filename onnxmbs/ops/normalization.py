"""Normalisations: BatchNorm and InstanceNorm are per channel (cut with their channels); LayerNorm over the
channel axis alone is cut with them too (its statistics then change: reconstruction absorbs it); the others
freeze them."""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, MIXES, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_SPEC, NO_SURGERY, NOT_ACTIVATION,
                               NOT_GATE, STOPS_WALK, OpRules, Params)

_NORM = dict(rf="pass", macs=NO_MACS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE)

RULES = (
    OpRules("BatchNormalization", channels="first", params=Params((1, 2)), tap_walk="through", spec="batchnorm",
            surgery="batchnorm", fit="channelwise", index="join", **_NORM),
    OpRules("InstanceNormalization", channels="first", params=NO_PARAMS, tap_walk=STOPS_WALK, spec=NO_SPEC,
            surgery="norm", fit="channelwise", index="join", **_NORM),
    # LayerNorm over the channels alone (ConvNeXt's channels-last blocks): scale and bias cut with the channels;
    # the statistics change with the kept set, so the layers behind it are re-fitted (MIXES)
    OpRules("LayerNormalization", channels="layernorm", params=Params((1, 2)), tap_walk=STOPS_WALK, spec="channelwise",
            surgery="elementwise", fit=MIXES, index="join", **_NORM),
    # GroupNorm's scale and bias are learnable; counted, never resized
    OpRules("GroupNormalization", channels=FROZEN, params=Params((1, 2)), tap_walk=STOPS_WALK, spec=NO_SPEC,
            surgery=NO_SURGERY, fit=MIXES, index=NO_CHANNELS, **_NORM),
    OpRules("LRN", channels=FROZEN, params=NO_PARAMS, tap_walk=STOPS_WALK, spec=NO_SPEC, surgery=NO_SURGERY, fit=MIXES,
            index=NO_CHANNELS, **_NORM),
)
