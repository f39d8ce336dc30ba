"""Layout and shape ops: Reshape/Flatten/Squeeze/Unsqueeze/Transpose move the channel axis (channel
shuffles included); shape-only ops carry no field and no channels; the rest freeze the channels they read."""
from __future__ import annotations

from onnxmbs.ops.rules import (FROZEN, MIXES, NO_CHANNELS, NO_MACS, NO_PARAMS, NO_SPEC, NO_SURGERY, NOT_ACTIVATION,
                               NOT_GATE, STOPS_WALK, OpRules)

_BASE = dict(macs=NO_MACS, params=NO_PARAMS, tap=NOT_ACTIVATION, tap_gate=NOT_GATE, spec=NO_SPEC)
_LAYOUT = dict(fit="channelwise", index="reshape", **_BASE)

RULES = (
    OpRules("Reshape", rf="pass", channels="reshape", tap_walk=STOPS_WALK, surgery="reshape", **_LAYOUT),
    OpRules("Flatten", rf="global", channels="reshape", tap_walk=STOPS_WALK, surgery=NO_SURGERY, **_LAYOUT),
    *(OpRules(op, rf="pass", channels="reshape", tap_walk=STOPS_WALK, surgery=NO_SURGERY, **_LAYOUT)
      for op in ("Squeeze", "Unsqueeze")),
    OpRules("Transpose", rf="pass", channels="transpose", tap_walk="transpose", surgery=NO_SURGERY, fit="channelwise",
            index="transpose", **_BASE),
    OpRules("Pad", rf="pass", channels="first", tap_walk=STOPS_WALK, surgery=NO_SURGERY, fit="channelwise",
            index="join", **_BASE),
    *(OpRules(op, rf="pass", channels=FROZEN, tap_walk=STOPS_WALK, surgery=NO_SURGERY, fit=MIXES, index=NO_CHANNELS,
              **_BASE)
      for op in ("Expand", "Tile", "Gather", "DepthToSpace", "SpaceToDepth")),
    *(OpRules(op, rf="none", channels="none", tap_walk=STOPS_WALK, surgery=NO_SURGERY, fit=MIXES, index=NO_CHANNELS,
              **_BASE)
      for op in ("Shape", "Size", "Constant", "ConstantOfShape")),
)
