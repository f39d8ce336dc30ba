"""Where the work runs: onnxruntime sessions and providers (:mod:`.session`), Ray (:mod:`.cluster`), and
PyTorch/Keras, imported quietly and detected on a model (:mod:`.frameworks`).

Every onnxmbs module that opens an onnxruntime session goes through :mod:`onnxmbs.runtime.session`.
Nothing is imported here: onnxruntime, Ray, torch and TensorFlow are heavy and loaded only when used.
"""
