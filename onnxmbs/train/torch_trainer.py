"""Train and evaluate a PyTorch classifier (the compact model from the adapter) on arrays.

``train_torch`` trains the module you pass, in place (it is yours: the adapter already gave
you a new one), with :class:`~onnxmbs.train.TrainConfig`'s SGD, schedule and augmentation,
and mixed precision (fp16 autocast + gradient scaling) when it runs on CUDA.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from onnxmbs.train import EpochBar, EpochLog, TrainConfig, TrainResult, augment, batches, data_arrays, lr_at

logger = logging.getLogger(__name__)


def pick_device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def predict_torch(model: nn.Module, x: np.ndarray, *, batch_size: int = 256) -> list[np.ndarray]:
    """The model's outputs over ``x`` (eval mode, no gradients; the training flag is restored), one array per
    output, batch first."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for idx in batches(len(x), batch_size, None):
                out = model(torch.from_numpy(np.ascontiguousarray(x[idx])).to(device))
                outs = [o.cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
                parts = [[o] for o in outs] if not parts else [p + [o] for p, o in zip(parts, outs)]
    finally:
        model.train(was_training)
    return [np.concatenate(p) for p in parts]


def evaluate_torch(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode; the training flag is restored)."""
    logits = predict_torch(model, x, batch_size=batch_size)[0]
    return int((logits.argmax(1) == y).sum()) / len(y)


def _step(model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
          xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, int]:
    with torch.autocast(xb.device.type, dtype=torch.float16, enabled=scaler is not None):
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return float(loss.detach()) * len(yb), int((logits.argmax(1) == yb).sum())


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, scaler, x: np.ndarray, y: np.ndarray, *,
           config: TrainConfig, epoch: int, rng: np.random.Generator, device: torch.device,
           bar: EpochBar) -> tuple[float, float]:
    model.train()
    parts = batches(len(y), config.batch_size, rng)
    total, correct, seen = 0.0, 0, 0
    for i, idx in enumerate(parts):
        if len(idx) < config.batch_size and len(parts) > 1:
            continue  # drop the short last batch (a batch of one breaks BatchNorm), as the Keras trainer does
        for group in opt.param_groups:
            group["lr"] = lr_at(config, (epoch + i / len(parts)) / config.epochs)
        xb = augment(x[idx], rng, layout="NCHW", crop_pad=config.crop_pad, flip=config.flip)
        loss, hits = _step(model, opt, scaler, torch.from_numpy(np.ascontiguousarray(xb)).to(device),
                           torch.from_numpy(y[idx]).to(device))
        total, correct, seen = total + loss, correct + hits, seen + len(idx)
        bar.step(total / seen, correct / seen)
    return total / max(seen, 1), correct / max(seen, 1)


def train_torch(model: nn.Module, train: Any, *, config: TrainConfig = TrainConfig(), val: Any = None,
                progress: bool | None = None) -> TrainResult:
    """Train ``model`` in place on ``train`` ((x, y) NCHW arrays or a Dataset); report ``val`` accuracy.

    ``progress``: a bar per epoch with loss and accuracy (None: on a terminal)."""
    x, y = data_arrays(train, "training data")
    xv, yv = data_arrays(val, "validation data") if val is not None else (None, None)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = pick_device(config)
    model.to(device)
    amp = config.mixed_precision if config.mixed_precision is not None else device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type) if amp and device.type == "cuda" else None
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    logs, began = [], time.perf_counter()
    for epoch in range(config.epochs):
        start = time.perf_counter()
        bar = EpochBar(progress, epoch=epoch, config=config, samples=len(y))
        loss, acc = _epoch(model, opt, scaler, x, y, config=config, epoch=epoch, rng=rng, device=device, bar=bar)
        val_acc = evaluate_torch(model, xv, yv) if xv is not None else None
        bar.close(loss, acc, val_acc)
        logs.append(EpochLog(epoch + 1, opt.param_groups[0]["lr"], loss, acc, val_acc, time.perf_counter() - start))
        logger.info("epoch %d/%d  lr %.4g  loss %.4f  train acc %.4f  val acc %s", epoch + 1, config.epochs,
                    logs[-1].lr, loss, acc, "-" if val_acc is None else f"{val_acc:.4f}")
    return TrainResult(tuple(logs), time.perf_counter() - began)
