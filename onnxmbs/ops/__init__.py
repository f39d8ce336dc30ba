"""Op knowledge in one place: one module per op family, one table (:mod:`onnxmbs.ops.registry`)."""
