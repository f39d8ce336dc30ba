"""The plan document from statistics: ``plan_from_statistics`` is Algorithm 1 on measured counts
(pure numpy); ``read_macroblock_map`` reads ``--macroblocks``. The whole job in one call (analyse ->
measure -> plan) is :func:`onnxmbs.workflow.plan.plan_model`, a later stage.
"""
from __future__ import annotations

import logging
from pathlib import Path

from onnxmbs.errors import MBSError
from onnxmbs.planning.build import PlanResult, plan_document, plan_from_statistics  # noqa: F401  (the API)
from onnxmbs.planning.gather import group_facts, layer_facts  # noqa: F401  (the API)
logger = logging.getLogger(__name__)

__all__ = ["PlanResult", "group_facts", "layer_facts", "plan_document", "plan_from_statistics", "read_macroblock_map"]


def read_macroblock_map(path: str | Path) -> dict[str, int]:
    """A JSON object ``{"conv node name": level, ...}`` that regroups convs by hand."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise MBSError(f"cannot read macroblock map {path} ({exc}) — "
                       "give a JSON object {\"layer\": level}") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise MBSError(f"macroblock map {path} must be a JSON object of layer name -> integer level, "
                       "e.g. {\"conv1\": 0, \"conv2\": 1}")
    return data
