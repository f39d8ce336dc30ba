"""Block Pruning: remove whole residual blocks, ranked by the accuracy measured without each.

Stages: :mod:`discover` (residual joins in the ONNX graph), :mod:`remove` (bypass blocks),
:mod:`scoring` (accuracy with each block removed, reusing the shared prefix), :mod:`greedy`
(rounds and stopping rules), :mod:`document` (the ``onnxmbs.blocks/1`` JSON), :mod:`apply`
(replay a blocks plan on its ONNX model).
"""
