"""Retraining the compact model (the paper's last step): a small, real trainer for both frameworks.

SGD with momentum and weight decay, the paper's step schedule (lr ÷ 10 at 50 % and 75 % of
the epochs) or cosine, random-crop and horizontal-flip augmentation, mixed precision on CUDA
(PyTorch). Data: arrays, ``.npz`` files or image folders (:mod:`onnxmbs.data.training`).

    from onnxmbs.train import TrainConfig
    from onnxmbs.train.torch_trainer import train_torch
    result = train_torch(compact, (x, y), config=TrainConfig(epochs=30), val=(x_val, y_val))
"""
from __future__ import annotations

import math
from typing import Any
from dataclasses import dataclass

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.progress import progress_bar

SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults follow the paper's CIFAR setting (He et al.): lr 0.1, momentum 0.9,
    weight decay 1e-4, batch 128, lr ÷ 10 at 50 % and 75 %, crop (pad 4) + horizontal flip.
    Turn ``flip`` off for data where a mirror image is another class (digits, text)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    flip: bool = True
    crop_pad: int = 4
    seed: int = 0
    mixed_precision: bool | None = None  # None: on when training on CUDA / a GPU TensorFlow sees
    device: str = "auto"  # PyTorch: auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise MBSError(f"unknown schedule {self.schedule!r} — use 'step' (÷10 at 50%/75%) or 'cosine'")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise MBSError(f"{name} must be at least 1, got {getattr(self, name)} — pass a positive number")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1 or self.crop_pad < 0:
            raise MBSError("lr must be > 0, weight_decay >= 0, momentum in [0, 1), crop_pad >= 0 — got "
                           f"lr={self.lr}, "
                           f"weight_decay={self.weight_decay}, momentum={self.momentum}, crop_pad={self.crop_pad}")


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    lr: float
    loss: float
    train_accuracy: float
    val_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    epochs: tuple[EpochLog, ...]
    seconds: float

    @property
    def val_accuracy(self) -> float | None:
        return self.epochs[-1].val_accuracy if self.epochs else None


def lr_at(config: TrainConfig, progress: float) -> float:
    """Learning rate at ``progress`` in [0, 1) of the whole run."""
    if config.schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))
    return config.lr * 0.1 ** ((progress >= 0.5) + (progress >= 0.75))


def augment(x: np.ndarray, rng: np.random.Generator, *, layout: str, crop_pad: int, flip: bool) -> np.ndarray:
    """Random crop (zero padding ``crop_pad``) and horizontal flip of a batch, NCHW or NHWC."""
    h_axis = 2 if layout == "NCHW" else 1
    n, h, w = x.shape[0], x.shape[h_axis], x.shape[h_axis + 1]
    out = x
    if crop_pad:
        pad = [(0, 0)] * x.ndim
        pad[h_axis] = pad[h_axis + 1] = (crop_pad, crop_pad)
        padded = np.pad(x, pad)
        dy, dx = rng.integers(0, 2 * crop_pad + 1, n), rng.integers(0, 2 * crop_pad + 1, n)
        if layout == "NCHW":
            out = np.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        else:
            out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mirror = rng.random(n) < 0.5
        out = out.copy() if out is x else out
        out[mirror] = np.flip(out[mirror], axis=h_axis + 1)
    return out


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index batches over ``n`` samples, shuffled when ``rng`` is given (the last may be short)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def data_arrays(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a dataset (``.x``/``.y``) or an ``(x, y)`` pair, checked."""
    x, y = (data.x, data.y) if hasattr(data, "x") else data
    return check_arrays(x, y, what)


def check_arrays(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float32), np.asarray(y).astype(np.int64).reshape(-1)
    if x.ndim != 4 or len(x) != len(y) or not len(y):
        raise MBSError(f"{what}: need images (N, C, H, W) or (N, H, W, C) and N labels, got {x.shape} and "
                       f"{y.shape} — pass matching arrays")
    return x, y


class EpochBar:
    """One progress bar per epoch over its batches, showing the running loss and accuracy (then the
    held-out accuracy); nothing when disabled (``enabled=None``: only on a terminal)."""

    def __init__(self, enabled: bool | None, *, epoch: int, config: TrainConfig, samples: int) -> None:
        full = samples // config.batch_size
        self.bar = progress_bar(enabled, total=max(full, 1), unit="batch", desc=f"epoch {epoch + 1}/{config.epochs}")

    def step(self, loss: float, accuracy: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, acc {accuracy:.2%}", refresh=False)
            self.bar.update(1)

    def close(self, loss: float, accuracy: float, val_accuracy: float | None) -> None:
        if self.bar is not None:
            held = "" if val_accuracy is None else f", held-out acc {val_accuracy:.2%}"
            self.bar.set_postfix_str(f"loss {loss:.4f}, acc {accuracy:.2%}{held}", refresh=True)
            self.bar.close()
