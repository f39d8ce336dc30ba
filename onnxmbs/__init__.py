"""onnxmbs — MBS (Macroblock Scaling, Lin/Chou/Chang CVPR 2019) for any ONNX CNN."""
from onnxmbs.analysis import Analysis, analyze
from onnxmbs.errors import MBSError

__all__ = ["Analysis", "MBSError", "analyze"]
__version__ = "0.1.0"
