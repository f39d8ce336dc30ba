"""onnxmbs — MBS (Macroblock Scaling, Lin/Chou/Chang CVPR 2019) for any ONNX CNN.

The public API, loaded on first use (PEP 562) so that ``import onnxmbs`` and
``onnxmbs --help`` import neither onnx, onnxruntime, PIL, torch nor TensorFlow.
"""
from __future__ import annotations

import importlib

from onnxmbs.errors import MBSError

__version__ = "0.1.0"
_API = {
    "Analysis": "onnxmbs.graph.analysis", "analyze": "onnxmbs.graph.analysis",
    "PlanResult": "onnxmbs.planning.pipeline", "plan_model": "onnxmbs.workflow.plan",
    "plan_from_statistics": "onnxmbs.planning.pipeline",
    "Plan": "onnxmbs.planning.document", "read_plan": "onnxmbs.planning.document",
    "StatsFile": "onnxmbs.stats.statsfile", "read_stats": "onnxmbs.stats.statsfile",
    "write_json": "onnxmbs.files",
    "compact_model": "onnxmbs.compact", "write_compact": "onnxmbs.compact",
    "read_compact_record": "onnxmbs.compact.record",
    "apply_plan": "onnxmbs.adapters",
    "open_labelled": "onnxmbs.data.labelled", "evaluate": "onnxmbs.stats.accuracy",
    "compare": "onnxmbs.stats.fidelity",
    "prune_blocks": "onnxmbs.blocks.greedy", "read_blocks_plan": "onnxmbs.blocks.document",
    "remove_blocks_from": "onnxmbs.adapters.blocks",
}
__all__ = ["MBSError", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'onnxmbs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
