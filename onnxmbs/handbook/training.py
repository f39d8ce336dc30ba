"""One training run of the handbook as a plain function of picklable inputs (so Ray can run it too).

:func:`run_task` seeds the framework, builds the model (a zoo architecture or the user's),
applies the task's plan (MBS, uniform, or the identity plan for the original model), trains
with the recipe's seed set to the task's, and counts the trained model's parameters.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from onnxmbs.handbook.record import Run, run_key
from onnxmbs.planning.document import PlanDocument
from onnxmbs.train import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where the model to retrain comes from: a zoo name, or the user's model spec (absolute paths)."""
    framework: str
    chw: tuple[int, int, int]
    num_classes: int
    zoo: str | None = None
    spec: str | None = None

    @classmethod
    def user(cls, spec: str, *, chw: tuple[int, int, int], num_classes: int) -> ModelSource:
        """The user's model; the framework is read from the loaded model."""
        from onnxmbs.runtime.frameworks import framework_of
        from onnxmbs.train.frameworks import load_user_model

        file, sep, function = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
        absolute = f"{Path(file).resolve()}{sep}{function}"  # Ray workers may run elsewhere
        return cls(framework=framework_of(load_user_model(absolute)), chw=chw, num_classes=num_classes,
                   spec=absolute)

    @property
    def name(self) -> str:
        return f"zoo:{self.zoo}" if self.zoo else str(self.spec)

    def load(self) -> Any:
        if self.zoo is not None:
            from onnxmbs.zoo import build

            return build(self.zoo, num_classes=self.num_classes, input_size=self.chw[1], framework=self.framework)
        from onnxmbs.train.frameworks import load_user_model

        return load_user_model(str(self.spec))


@dataclass(frozen=True)
class Trainer:
    """Everything a training task needs, shared by all tasks (Ray puts it in the object store once)."""
    source: ModelSource
    train: Any = field(repr=False)  # onnxmbs.data.training.Dataset in the framework's layout
    val: Any = field(repr=False)
    config: TrainConfig
    init: str = "scratch"
    threads: int | None = None  # framework CPU threads per run (1: deterministic and parallel-friendly)
    metric: str | None = None  # python:FILE.py:FUNCTION (absolute path) scoring the held-out outputs
    targets: Mapping[str, Any] | None = field(default=None, repr=False)  # the metric's: val data's other arrays


@dataclass(frozen=True)
class Task:
    variant: str  # original | mbs | uniform
    k: float | None
    seed: int
    plan: PlanDocument = field(repr=False)
    alpha: float | None = None

    @property
    def key(self) -> str:
        return run_key(self.variant, self.k, self.seed)


def set_threads(framework: str, threads: int | None) -> None:
    """Limit the framework's CPU threads (TensorFlow only before its first op; later calls are ignored)."""
    if not threads:
        return
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logger.debug("TensorFlow already initialised: keeping its thread settings")


def run_task(trainer: Trainer, task: Task) -> Run:
    """Seed, build, apply the plan, train, evaluate on the held-out data, count parameters."""
    from onnxmbs.adapters import adapt, count_params
    from onnxmbs.train.frameworks import seed_framework, train_model

    began = time.perf_counter()
    source = trainer.source
    set_threads(source.framework, trainer.threads)
    if source.framework == "keras":
        from onnxmbs.runtime.frameworks import import_keras

        import_keras().backend.clear_session()  # fresh name and seed counters: a run does not depend on earlier ones
    seed_framework(source.framework, task.seed)
    model = adapt(source.load(), source.framework, task.plan, source.chw, trainer.init)
    result = train_model(model, source.framework, trainer.train, trainer.val, replace(trainer.config, seed=task.seed),
                         progress=False)
    run = Run(variant=task.variant, k=task.k, seed=task.seed, alpha=task.alpha,
              params=count_params(model, source.framework, source.chw), accuracy=float(result.val_accuracy),
              seconds=round(time.perf_counter() - began, 3), epochs=len(result.epochs),
              score=_score(trainer, model))
    logger.info("%s: %.2f%% held-out accuracy%s, %d params, %.0f s", run.key, 100 * run.accuracy,
                "" if run.score is None else f", metric {run.score:.4f}", run.params, run.seconds)
    return run


def _score(trainer: Trainer, model: Any) -> float | None:
    """The user metric on the trained model's held-out outputs (None without a metric)."""
    if trainer.metric is None:
        return None
    from onnxmbs.stats.metric import load_metric, score
    from onnxmbs.train.frameworks import predict

    outputs = predict(model, trainer.source.framework, trainer.val.x)
    return score(load_metric(trainer.metric), outputs, dict(trainer.targets or {}))
