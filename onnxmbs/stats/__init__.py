"""Stage 5a — statistics: calibration data, the instrumented onnxruntime pass, stats files."""
