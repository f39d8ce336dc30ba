"""``onnxmbs handbook``: the accuracy side of the trade-off table (the paper's Figures 4 and 5).

    onnxmbs handbook model.onnx --zoo resnet20 --data calib/ --train train.npz --val val.npz \\
        --k 0.6:1.4:0.2 --uniform --seeds 5 --epochs 30 -o handbook.json -o handbook.html

One statistics pass on the ONNX export, a plan per k, then for each k the compact model
(and with ``--uniform`` the uniformly scaled model of the same size) is retrained per seed
and evaluated on the held-out data. Finished runs are kept in ``--runs DIR``: run the same
command again after an interruption and it continues where it stopped.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from onnxmbs.cli.options import (clean_errors, max_images_option, normalisation_options, progress_option, ray_options,
                                 refuse_overwrite, round_to_option, threads_option, training_options)
from onnxmbs.cli.values import KValues, OutputFile


def _trainer(onnx: str, zoo_name: str | None, framework: str | None, model_spec: str | None, *, train: str,
             val: str, normalisation: tuple, init: str, threads: int | None, config, metric: str | None = None):
    """The model source and the two data sets, in the framework's layout at the ONNX input size."""
    from onnxmbs.graph.load import load_model
    from onnxmbs.handbook.training import ModelSource, Trainer
    from onnxmbs.data.normalisation import resolve_normalisation
    from onnxmbs.data.training import load_dataset
    from onnxmbs.runtime.frameworks import require_framework
    from onnxmbs.zoo import lookup

    loaded = load_model(onnx)
    preset, mean, std = normalisation
    norm = resolve_normalisation(loaded.metadata, preset, mean=mean, std=std, where=loaded.path)
    shape, layout = loaded.input.shape, loaded.input.layout
    chw = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if model_spec:
        source = ModelSource.user(model_spec, chw=chw, num_classes=0)
    else:
        entry = lookup(zoo_name)
        source = ModelSource(framework=framework or entry.framework, chw=chw, num_classes=0, zoo=entry.name)
    require_framework(source.framework, "onnxmbs handbook")  # before any statistics pass or runs folder
    kwargs = {"layout": "NCHW" if source.framework == "torch" else "NHWC", "normalisation": norm,
              "size": chw[1:], "channels": chw[0]}
    train_set, val_set = load_dataset(train, **kwargs), load_dataset(val, **kwargs)
    source = replace(source, num_classes=train_set.num_classes)
    return Trainer(source=source, train=train_set, val=val_set, config=config, init=init, threads=threads,
                   **_metric(metric, val, len(val_set.y), onnx=loaded, normalisation=normalisation))


def _metric(metric: str | None, val: str, images: int, *, onnx, normalisation: tuple) -> dict:
    """--metric python:FILE.py:FUNCTION: the spec (absolute path: Ray workers load it too) and its targets,
    the --val .npz's other arrays; checked here, before any training, by scoring the given ONNX model
    (a metric that fails on its outputs fails now, not after the first training)."""
    if metric is None or metric in ("accuracy", "top-1"):
        return {}
    from onnxmbs.stats.metric import PREFIX, check_targets, load_metric, measure, read_targets

    if not metric.startswith(PREFIX) or metric.count(":") < 2:
        raise click.BadParameter(f"{metric!r} — use accuracy or python:FILE.py:FUNCTION", param_hint="--metric")
    loaded = load_metric(metric)
    targets = read_targets(val)
    check_targets(targets, images, str(val))
    preset, mean, std = normalisation
    measure(onnx, val, loaded, preprocess=preset, mean=mean, std=std)
    return {"metric": f"{PREFIX}{loaded.path.resolve()}:{loaded.name}", "targets": targets}


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, exists=True))
@click.option("--zoo", "zoo_name", default=None, help="The model's zoo architecture, e.g. resnet20.")
@click.option("--framework", type=click.Choice(["torch", "keras"]), default=None,
              help="Zoo builder (default: the model's first).")
@click.option("--model", "model_spec", default=None,
              help="Your model: .pt/.pth (torch.save(model)), .keras, or FILE.py:FUNCTION.")
@click.option("--data", default=None, type=click.Path(exists=True),
              help="Calibration images for the statistics pass: a folder or a .npy/.npz array.")
@click.option("--stats", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Counts saved by `onnxmbs profile` instead of --data.")
@max_images_option(help="Calibration: use at most N images.")
@click.option("--train", "train_data", required=True, type=click.Path(exists=True),
              help="Training data: .npz (x, y) or a folder of class folders.")
@click.option("--val", "val_data", required=True, type=click.Path(exists=True),
              help="Held-out evaluation data: .npz (x, y) or a folder of class folders.")
@normalisation_options
@click.option("--k", "k_range", type=KValues(), default="0.6:1.4:0.2", show_default=True,
              help="k values: start:stop:step (stop included) or a list 0.6,1,1.4.")
@round_to_option
@click.option("--uniform", is_flag=True, help="Also train uniform α-scaling at each k's parameter budget.")
@click.option("--original/--no-original", default=True, show_default=True,
              help="Also train the original (full-width) model with the same recipe and seeds.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Trainings per variant.")
@click.option("--init", type=click.Choice(["scratch", "inherit"]), default="scratch", show_default=True,
              help="scratch: re-initialise (the paper); inherit: keep the surviving channels' weights.")
@training_options
@click.option("--metric", default=None, metavar="accuracy|python:FILE.py:FUNCTION",
              help="What the handbook compares: held-out top-1 (default), or your FUNCTION(outputs, targets) -> float "
                   "(higher is better) on the trained models' outputs over --val, with targets the --val .npz's "
                   "other arrays. Top-1 is recorded too.")
@threads_option(help="CPU threads per training (1 makes CPU runs repeatable run to run).")
@ray_options(workers_help="Run the trainings as N Ray tasks.")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default=None,
              help="Where finished runs are kept (default: beside the first -o, NAME.runs/).")
@click.option("-o", "--output", "outputs", multiple=True, required=True, type=OutputFile("handbook"),
              help="Handbook file; the format follows the suffix: .json .md .csv .html (repeatable).")
@progress_option()
@clean_errors
def handbook(model: str, zoo_name, framework, model_spec, data, stats, max_images, train_data, val_data, preprocess,
             mean, std, k_range, round_to, uniform, original, seeds, init, metric, threads, workers, ray_address,
             runs_dir, outputs, progress, **train_options) -> None:
    """Retrain and evaluate MBS at every k (with --uniform, also uniform scaling at the same size): the accuracy
    handbook."""
    from onnxmbs.errors import MBSError
    from onnxmbs.handbook.engine import HandbookJob, run_handbook
    from onnxmbs.handbook.store import RunStore
    from onnxmbs.reports.formats import write_handbook
    from onnxmbs.reports.handbook import handbook_text
    from onnxmbs.stats.measure import CalibrationOptions
    from onnxmbs.train import TrainConfig

    if (zoo_name is None) == (model_spec is None):
        raise click.UsageError("give exactly one of --zoo NAME or --model FILE")
    if (data is None) == (stats is None):
        raise click.UsageError("give calibration data with --data PATH, or saved counts with --stats FILE")
    if zoo_name is not None and init == "inherit":
        raise MBSError("--init inherit needs trained weights — pass your trained model with --model, "
                       "or use --init scratch")
    for out in outputs:
        refuse_overwrite(out, model, train_data, val_data, *(p for p in (data, stats) if p))
    config = TrainConfig(**train_options)
    trainer = _trainer(model, zoo_name, framework, model_spec, train=train_data, val=val_data,
                       normalisation=(preprocess, mean, std), init=init, threads=threads, config=config,
                       metric=metric)
    job = HandbookJob(onnx=model, trainer=trainer, stats=stats, ks=tuple(k_range), seeds=seeds, uniform=uniform,
                      original=original, round_to=round_to, train_data=train_data, val_data=val_data,
                      calibration=CalibrationOptions(data=data, preprocess=preprocess, mean=mean, std=std,
                                                     max_images=max_images, progress=progress))
    store = RunStore(runs_dir or Path(outputs[0]).with_suffix(".runs"))
    with store.removed_on_failure():
        book = run_handbook(job, store, progress=progress, **_executor(workers, ray_address))
    for out in outputs:
        write_handbook(book, out)
    click.echo(handbook_text(book))
    click.echo(f"{len(book.runs)} runs in {store.root}; written: {', '.join(outputs)}")


def _executor(workers: int | None, ray_address: str | None) -> dict:
    if workers is None and ray_address is None:
        return {}
    from onnxmbs.handbook.engine import ray_executor

    return {"execute": ray_executor(workers=workers, address=ray_address)}
