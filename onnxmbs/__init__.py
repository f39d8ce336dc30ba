"""onnxmbs — MBS (Macroblock Scaling, Lin/Chou/Chang CVPR 2019) for any ONNX CNN."""
from onnxmbs.adapters import apply_plan
from onnxmbs.analysis import Analysis, analyze
from onnxmbs.compact import compact_model, write_compact
from onnxmbs.errors import MBSError
from onnxmbs.pipeline import PlanResult, plan_from_statistics, plan_model
from onnxmbs.planfile import read_plan, write_json

__all__ = ["Analysis", "MBSError", "PlanResult", "analyze", "apply_plan", "compact_model", "plan_from_statistics",
           "plan_model", "read_plan", "write_compact", "write_json"]
__version__ = "0.1.0"
