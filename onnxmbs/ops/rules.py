"""The record of what every stage does with one op type (see docs/adding-an-op.md).

A field is either the *kind* of rule the stage applies — a lowercase name the stage module
maps to its own function (``graph/shapes.py`` maps ``"pool"`` to its pooling RF rule) — or
:class:`Declined` with the reason the stage does not handle the op. The records are plain
data, so this package imports nothing of the stages and every stage can import it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Declined:
    """A stage does not handle this op; ``reason`` says why (and so what the stage does instead)."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("Declined needs a reason")


@dataclass(frozen=True)
class Params:
    """Which inputs hold learnable parameters when they are constants (graph/costs.py).

    ``vectors_only``: a constant of one element is not a parameter (``x * 0.5``); per-channel
    constants are (tf2onnx's unfused BatchNorm as Mul/Add).
    """

    inputs: tuple[int, ...]
    vectors_only: bool = False


Kind = str | Declined


@dataclass(frozen=True)
class OpRules:
    """One op type across all stages. Every field must be given: a stage's kind or a :class:`Declined`."""

    op: str
    rf: Kind  # graph/shapes.py: receptive field; "pass" keeps the input's field
    channels: Kind  # graph/channels.py: channel coupling; declined = the groups it reads are frozen
    macs: Kind  # graph/costs.py: multiply-accumulates; declined = none counted
    params: Params | Declined  # graph/costs.py: parameter inputs
    tap: Kind  # graph/activations.py: an activation a tap can stop at
    tap_gate: Kind  # graph/activations.py: a step inside a gate (SiLU's Sigmoid, HardSwish's Clip, ...)
    tap_walk: Kind  # graph/activations.py: how the walk from a conv to its tap passes the op
    spec: Kind  # planning/scaling.py: how its parameter tensors' axes follow channel groups
    surgery: Kind  # compact/surgery.py: how its constant inputs are cut
    fit: Kind  # compact/fits.py: what least-squares reconstruction makes of it
    index: Kind  # compact/index.py: which original channels its output carries


STAGES = ("rf", "channels", "macs", "params", "tap", "tap_gate", "tap_walk", "spec", "surgery", "fit", "index")


# reasons shared by many families
NO_RF = Declined("no receptive-field rule: counted as an unknown op, its input's field passed on")
NO_MACS = Declined("no multiply-accumulates counted: only Conv, ConvTranspose, Gemm and MatMul are (fvcore style)")
NO_PARAMS = Declined("no learnable inputs")
NOT_ACTIVATION = Declined("not an activation a tap stops at")
NOT_GATE = Declined("not part of a gated activation")
STOPS_WALK = Declined("the walk to the activation tap stops here: the op does not keep channels one-to-one")
NO_SPEC = Declined("no parameter tensors to follow channel groups")
NO_SURGERY = Declined("no constant input along the channels: nothing to cut")
MIXES = Declined("treated as mixing channels: reconstruction re-fits the weighted layers behind it")
NO_CHANNELS = Declined("its output carries no channels (the channel stage freezes or ignores its inputs)")
FROZEN = Declined("onnxmbs cannot resize it: the channel groups it reads are frozen")
