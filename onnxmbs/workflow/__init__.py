"""The workflow layer: the analyse → measure → plan/sweep sequence, written once.

``sequence`` holds it (:func:`~onnxmbs.workflow.sequence.study`, which every planning command,
the gate, the report, the handbook and ``onnxmbs.plan_model`` call); ``batch`` and ``gate`` run it
over many models, a failure becoming a row or a verdict. What they return is rendered by
:mod:`onnxmbs.reports`, which measures nothing itself.
"""
