"""The static view of a model: load -> shapes & RF -> taps, macroblocks, channel groups.

``analyze`` is what ``onnxmbs analyze`` prints and what the statistics pass and the
planner build on. It needs no data.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxmbs.graph.activations import EXTENDED, Tap, find_taps
from onnxmbs.graph.channels import ChannelAnalysis, analyze_channels
from onnxmbs.graph.load import LoadedModel, load_model
from onnxmbs.graph.macroblocks import Macroblock, build_macroblocks
from onnxmbs.graph.shapes import ConvLayer, ShapeAnalysis, analyze_shapes


@dataclass(frozen=True)
class Analysis:
    loaded: LoadedModel = field(repr=False)
    shapes: ShapeAnalysis = field(repr=False)
    taps: Mapping[str, Tap | None]
    macroblocks: tuple[Macroblock, ...]
    channels: ChannelAnalysis = field(repr=False)
    statistic: str = EXTENDED  # "extended": non-ReLU activations count outputs > 0; "paper": only ReLU family

    @property
    def layers(self) -> tuple[ConvLayer, ...]:
        return self.shapes.convs

    @property
    def L(self) -> int:  # noqa: N802
        return self.loaded.input.L

    def macroblock_of(self) -> dict[str, int]:
        return {name: mb.index for mb in self.macroblocks for name in mb.layers}


def analyze(source: str | Path | onnx.ModelProto | LoadedModel, *, input_shape: tuple[int, ...] | None = None,
            macroblock_override: Mapping[str, int] | None = None, statistic: str = EXTENDED) -> Analysis:
    """Static analysis of an ONNX CNN; the model itself is never modified.

    ``statistic="paper"`` taps ReLU-family activations only (other convs: p = 1, not measured).
    """
    loaded = source if isinstance(source, LoadedModel) else load_model(source, input_shape=input_shape)
    shapes = analyze_shapes(loaded)
    return Analysis(
        loaded=loaded, shapes=shapes, taps=find_taps(loaded, shapes.convs, statistic=statistic),
        macroblocks=build_macroblocks(shapes.convs, loaded.input.L, override=macroblock_override),
        channels=analyze_channels(loaded, shapes.convs), statistic=statistic)
