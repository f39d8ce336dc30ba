"""The compact ONNX file: cut channels by the plan, check it, time it."""
from onnxmbs.compact.writer import CompactResult, compact_model, sidecar_path, write_compact

__all__ = ["CompactResult", "compact_model", "sidecar_path", "write_compact"]
