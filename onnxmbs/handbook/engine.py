"""The handbook loop: one statistics pass, the plans (MBS and uniform) per k, the training runs, the document.

:func:`prepare` measures (or reloads) the statistics and makes every plan in milliseconds
(:class:`~onnxmbs.planning.sweep.Sweeper`); :func:`run_handbook` trains what the run
directory does not hold yet — in this process, or as Ray tasks with ``workers`` — saving
each run as it finishes, and returns the :class:`~onnxmbs.handbook.record.Handbook`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from onnxmbs.errors import MBSError
from onnxmbs.handbook.record import SCHEMA, Handbook, Point, Run, Settings
from onnxmbs.handbook.store import RunStore
from onnxmbs.handbook.training import Task, Trainer, run_task
from onnxmbs.progress import progress_bar
from onnxmbs.stats.measure import CalibrationOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandbookJob:
    """What to build: the ONNX export and its calibration data, the k values, seeds and variants."""
    onnx: str
    trainer: Trainer = field(repr=False)
    calibration: CalibrationOptions = CalibrationOptions()
    stats: str | None = None  # counts from `onnxmbs profile` instead of calibration data
    ks: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2, 1.4)
    seeds: int = 1
    uniform: bool = False
    original: bool = True
    round_to: int | str = 1  # or "auto" (per k: onnxmbs.compact.rounding)
    train_data: str = ""
    val_data: str = ""


@dataclass(frozen=True)
class Prepared:
    settings: Settings
    params: int
    flops: int
    points: tuple[Point, ...]
    tasks: tuple[Task, ...] = field(repr=False)


def _statistics(job: HandbookJob, store: RunStore):
    """The workflow's sequence: analysis and one statistics pass (reloaded from the run directory when resuming)."""
    from onnxmbs.stats.statsfile import save_stats
    from onnxmbs.workflow import sequence

    saved = tuple(p for p in (job.stats, store.stats_path if store.stats_path.is_file() else None) if p)
    if not saved and not job.calibration.has_data:
        raise MBSError("the handbook needs calibration data (--data) or saved counts (--stats)")
    done = sequence.study(job.onnx, sequence.Request(calibration=job.calibration, stats=saved, round_to=job.round_to))
    if not store.stats_path.is_file():
        save_stats(store.stats_path, done.analysis, done.statistics, preprocess=done.source.preprocess,
                   normalisation=done.source.normalisation)
    return done


def _settings(job: HandbookJob, analysis: Any, images: int) -> Settings:
    config = {k: v for k, v in asdict(job.trainer.config).items() if k != "seed"}
    calib = job.calibration.data if isinstance(job.calibration.data, str) else job.stats
    norm = job.calibration.normalisation(analysis.loaded)  # the training data's too (cli/handbook)
    return Settings(model=str(job.onnx), sha256=analysis.loaded.sha256, source=job.trainer.source.name,
                    framework=job.trainer.source.framework, init=job.trainer.init, train=config,
                    train_data=job.train_data, val_data=job.val_data, calibration=calib,
                    preprocess=norm.name, normalisation=norm, images=images,
                    round_to=job.round_to, ks=tuple(job.ks), seeds=job.seeds, uniform=job.uniform,
                    original=job.original, metric=job.trainer.metric)


def _plans(job: HandbookJob, done: Any) -> tuple[list[Point], list[Task]]:
    """A point per k; the tasks: MBS (and uniform) per k and seed, then the original per seed."""
    from onnxmbs.planning.uniform import match_alpha, uniform_at, uniform_document

    points, tasks, sweeper = [], [], done.sweeper
    seeds = range(job.seeds)
    for k in job.ks:
        at, doc = done.at(k), done.plan(k, with_convergence=False).document
        point = Point(k=float(k), rf_boundary=at.rf_boundary, beta=at.beta, configuration=at.configuration,
                      params=at.params_compact, flops=at.flops_compact,
                      round_to=at.round_to if job.round_to == "auto" else None)
        tasks += [Task("mbs", float(k), s, doc) for s in seeds]
        if job.uniform:
            uni = match_alpha(sweeper.groups, sweeper.layers, sweeper.specs, at.params_compact,
                              round_to=at.round_to)
            point = replace(point, alpha=uni.alpha, uniform_params=uni.summary.params_compact,
                            uniform_flops=uni.summary.flops_compact, uniform_step=uni.step)
            tasks += [Task("uniform", float(k), s, uniform_document(doc, uni), uni.alpha) for s in seeds]
        points.append(point)
    if job.original:
        identity = uniform_document(doc, uniform_at(sweeper.groups, sweeper.layers, sweeper.specs, 1.0))
        tasks += [Task("original", None, s, identity) for s in seeds]
    return points, tasks


def prepare(job: HandbookJob, store: RunStore) -> Prepared:
    """Statistics once, then every plan: points (what the table shows) and tasks (what is trained)."""
    if not job.ks:
        raise MBSError("no k values — pass e.g. --k 0.6:1.4:0.2")
    done = _statistics(job, store)
    points, tasks = _plans(job, done)
    base = done.at(max(job.ks))
    return Prepared(settings=_settings(job, done.analysis, done.statistics.images), params=base.params,
                    flops=base.flops, points=tuple(points), tasks=tuple(tasks))


def _sequential(trainer: Trainer, tasks: Sequence[Task], progress: bool | None) -> Iterator[Run]:
    bar = progress_bar(progress, total=len(tasks), unit="run", desc="training")
    try:
        for task in tasks:
            if bar is not None:
                bar.set_postfix_str(task.key)
            yield run_task(trainer, task)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


Executor = Callable[[Trainer, Sequence[Task], "bool | None"], Iterator[Run]]


def run_handbook(job: HandbookJob, store: RunStore, *, execute: Executor = _sequential,
                 progress: bool | None = None) -> Handbook:
    """Train every run the store does not hold, saving each as it finishes; ``execute`` runs the tasks."""
    began = time.perf_counter()
    store.root.mkdir(parents=True, exist_ok=True)
    prepared = prepare(job, store)
    store.open(prepared.settings)
    done = store.load()
    todo = [t for t in prepared.tasks if t.key not in done]
    if done:
        logger.info("resuming: %d of %d runs already done in %s", len(prepared.tasks) - len(todo), len(prepared.tasks),
                    store.root)
    for run in execute(job.trainer, todo, progress):
        store.save(run)
        done[run.key] = run
    runs = tuple(done[t.key] for t in prepared.tasks if t.key in done)
    return Handbook(schema=SCHEMA, settings=prepared.settings, params=prepared.params, flops=prepared.flops,
                    points=prepared.points, runs=runs, seconds=round(time.perf_counter() - began, 3))


def ray_executor(*, workers: int | None, address: str | None = None) -> Executor:
    """Run the tasks as Ray tasks (:mod:`onnxmbs.runtime.cluster`), one CPU each. Runs come back, and are saved,
    in task order: a run that finishes early waits for the ones before it (at most ``2 × workers`` queued)."""
    from onnxmbs.runtime.cluster import connect, require_ray, run_ordered

    require_ray("--workers" if workers is not None else "--ray-address")

    def execute(trainer: Trainer, tasks: Sequence[Task], progress: bool | None) -> Iterator[Run]:
        if not tasks:
            return
        with connect(address, workers=workers):
            yield from run_ordered(run_task, [(t,) for t in tasks], shared=trainer, window=2 * (workers or 2),
                                   progress=progress, desc="training", unit="run")
    return execute
