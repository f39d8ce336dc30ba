"""Train and evaluate a Keras classifier (the compact model from the adapter) on NHWC arrays.

Same recipe as the PyTorch trainer: SGD with momentum, the step or cosine schedule (set per
batch), crop + flip augmentation in numpy. Weight decay is Keras 3's optimizer
``weight_decay`` (``w -= lr·wd·w`` each step, equal to an L2 term for plain SGD). Mixed
precision (on by default when TensorFlow sees a GPU, or with ``mixed_precision=True``) trains
a clone whose layers compute in float16 under Keras's ``mixed_float16`` policy (the last layer
stays float32 for stable logits; variables are float32 throughout) and copies the weights back
into the caller's model afterwards. The model is compiled by ``train_keras`` (an earlier compile
is replaced).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from onnxmbs.train import EpochBar, EpochLog, TrainConfig, TrainResult, augment, batches, data_arrays, lr_at

logger = logging.getLogger(__name__)


def _from_logits(model: Any) -> bool:
    """False when the model already ends in a softmax (keras.applications style)."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return type(last).__name__ != "Softmax" and getattr(activation, "__name__", "") != "softmax"


def predict_keras(model: Any, x: np.ndarray, *, batch_size: int = 256) -> list[np.ndarray]:
    """The model's outputs over ``x`` (inference mode), one array per output, batch first."""
    parts: list[list[np.ndarray]] = []
    for idx in batches(len(x), batch_size, None):
        out = model(x[idx], training=False)
        outs = [np.asarray(o) for o in (out if isinstance(out, (tuple, list)) else (out,))]
        parts = [[o] for o in outs] if not parts else [p + [o] for p, o in zip(parts, outs)]
    return [np.concatenate(p) for p in parts]


def evaluate_keras(model: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
    """Top-1 accuracy (inference mode)."""
    logits = predict_keras(model, x, batch_size=batch_size)[0]
    return int((logits.argmax(1) == y).sum()) / len(y)


def _compile(model: Any, config: TrainConfig) -> None:
    from onnxmbs.runtime.frameworks import import_keras

    keras = import_keras()

    opt = keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay or None)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=_from_logits(model))
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"], jit_compile=False)  # XLA: slow to compile on CPU


def _epoch(model: Any, x: np.ndarray, y: np.ndarray, *, config: TrainConfig, epoch: int,
           rng: np.random.Generator, bar: EpochBar) -> tuple[float, float]:
    """One epoch; returns the mean loss and accuracy over its batches (train_on_batch reports per batch)."""
    parts = batches(len(y), config.batch_size, rng)
    total, correct, seen = 0.0, 0.0, 0
    for i, idx in enumerate(parts):
        if len(idx) < config.batch_size and len(parts) > 1:
            continue  # drop the short last batch: a new batch shape would retrace the train step
        model.optimizer.learning_rate = lr_at(config, (epoch + i / len(parts)) / config.epochs)
        xb = augment(x[idx], rng, layout="NHWC", crop_pad=config.crop_pad, flip=config.flip)
        logs = model.train_on_batch(xb, y[idx], return_dict=True)
        total += float(logs["loss"]) * len(idx)
        correct += float(logs["accuracy"]) * len(idx)
        seen += len(idx)
        bar.step(total / seen, correct / seen)
    return total / max(seen, 1), correct / max(seen, 1)


def _gpu_visible() -> bool:
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return bool(tf.config.list_physical_devices("GPU"))


def mixed_precision_clone(model: Any) -> Any:
    """A copy of a functional/Sequential ``model`` computing in float16 (last layer float32), same weights."""
    from onnxmbs.runtime.frameworks import import_keras

    keras = import_keras()

    last = model.layers[-1]

    def clone(layer: Any) -> Any:
        config = {**layer.get_config(), "dtype": "float32" if layer is last else "mixed_float16"}
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


def train_keras(model: Any, train: Any, *, config: TrainConfig = TrainConfig(), val: Any = None,
                progress: bool | None = None) -> TrainResult:
    """Train ``model`` in place on ``train`` ((x, y) NHWC arrays or a Dataset); report ``val`` accuracy.

    ``progress``: a bar per epoch with loss and accuracy (None: on a terminal)."""
    from onnxmbs.runtime.frameworks import import_keras

    keras = import_keras()

    x, y = data_arrays(train, "training data")
    xv, yv = data_arrays(val, "validation data") if val is not None else (None, None)
    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    amp = config.mixed_precision if config.mixed_precision is not None else _gpu_visible()
    work = mixed_precision_clone(model) if amp else model
    result = _train(work, x, y, xv, yv, config=config, rng=rng, progress=progress)
    if work is not model:
        model.set_weights(work.get_weights())
    return result


def _train(model: Any, x: np.ndarray, y: np.ndarray, xv: np.ndarray | None, yv: np.ndarray | None, *,
           config: TrainConfig, rng: np.random.Generator, progress: bool | None = None) -> TrainResult:
    _compile(model, config)
    logs, began = [], time.perf_counter()
    for epoch in range(config.epochs):
        start = time.perf_counter()
        bar = EpochBar(progress, epoch=epoch, config=config, samples=len(y))
        loss, acc = _epoch(model, x, y, config=config, epoch=epoch, rng=rng, bar=bar)
        val_acc = evaluate_keras(model, xv, yv) if xv is not None else None
        bar.close(loss, acc, val_acc)
        lr = float(np.asarray(model.optimizer.learning_rate))
        logs.append(EpochLog(epoch + 1, lr, loss, acc, val_acc, time.perf_counter() - start))
        logger.info("epoch %d/%d  lr %.4g  loss %.4f  train acc %.4f  val acc %s", epoch + 1, config.epochs,
                    lr, loss, acc, "-" if val_acc is None else f"{val_acc:.4f}")
    return TrainResult(tuple(logs), time.perf_counter() - began)
