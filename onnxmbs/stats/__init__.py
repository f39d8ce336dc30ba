"""Statistics: the instrumented onnxruntime pass, stats files, where counts came from, accuracy."""
