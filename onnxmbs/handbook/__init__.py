"""The accuracy handbook (the paper's Figures 4 and 5 as a command).

One statistics pass, a plan per k (:mod:`onnxmbs.planning.sweep`), then for each k the
compact model is retrained and evaluated over several seeds, beside uniform width scaling
at the same parameter budget (:mod:`onnxmbs.planning.uniform`). Every finished training
run is saved at once (:mod:`onnxmbs.handbook.store`), so an interrupted handbook resumes
where it stopped. The result is a :class:`~onnxmbs.handbook.record.Handbook` document
(schema ``onnxmbs.handbook/1``); :mod:`onnxmbs.reports.handbook` renders it.
"""
