"""Segmentation metrics for ``onnxmbs evaluate --metric python:tools/metrics/segmentation.py:FUNCTION``.

Data: a ``.npz`` with ``images`` (N, H, W, 3 uint8, or the model's float input) and ``masks``
(N, H, W integer class per pixel; pixels with class ``IGNORE`` = 255 are left out). The model's first
output holds per-pixel class scores, (N, classes, H, W) (or NHWC, (N, H, W, classes)).

    onnxmbs evaluate seg.onnx --data val.npz --metric python:tools/metrics/segmentation.py:mean_iou
"""
from __future__ import annotations

import numpy as np

IGNORE = 255


def _predicted(outputs: list[np.ndarray], masks: np.ndarray) -> np.ndarray:
    scores = outputs[0]
    if scores.ndim != 4:
        raise ValueError(f"the first output has shape {scores.shape}; expected per-pixel class scores (N, C, H, W)")
    if scores.shape[2:] == masks.shape[1:]:
        return scores.argmax(axis=1)
    if scores.shape[1:3] == masks.shape[1:]:
        return scores.argmax(axis=3)
    raise ValueError(f"output {scores.shape} does not match masks {masks.shape} (N, H, W)")


def pixel_accuracy(outputs: list[np.ndarray], targets: dict[str, np.ndarray]) -> float:
    """Share of labelled pixels whose predicted class equals the mask's."""
    masks = targets["masks"]
    pred, keep = _predicted(outputs, masks), masks != IGNORE
    return float((pred[keep] == masks[keep]).mean())


def mean_iou(outputs: list[np.ndarray], targets: dict[str, np.ndarray]) -> float:
    """Mean over classes present in the masks or the prediction of |pred ∩ mask| / |pred ∪ mask|."""
    masks = targets["masks"]
    pred, keep = _predicted(outputs, masks), masks != IGNORE
    p, m = pred[keep], masks[keep]
    ious = []
    for c in np.union1d(np.unique(p), np.unique(m)):
        union = np.sum((p == c) | (m == c))
        ious.append(np.sum((p == c) & (m == c)) / union)
    return float(np.mean(ious))
