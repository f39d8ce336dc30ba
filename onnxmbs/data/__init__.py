"""A user's data, read one way for every command.

Calibration images (the statistics pass, reconstruction, INT8), labelled data (accuracy,
block scoring) and training data (retrain, the handbook) are read by the same loaders
(:mod:`.sources`, :mod:`.calibration`, :mod:`.labelled`, :mod:`.training`): the same
formats, array keys, resizing and centre crop. How pixels are normalised is decided once,
by :func:`onnxmbs.data.normalisation.resolve_normalisation`.
"""
