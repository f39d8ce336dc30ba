"""``onnxmbs blocks``: remove whole residual blocks, ranked by the score measured without each.

    onnxmbs blocks model.onnx --data val/ --remove 3 -o blocks.json --output-model shallow.onnx
    onnxmbs blocks detector.onnx --data images/ --metric fidelity --max-fidelity-loss 0.05
"""
from __future__ import annotations

import json

import click

from onnxmbs.cli.options import (clean_errors, labelled_options, open_images_data, open_labelled_data, progress_option,
                                 ray_options, refuse_overwrite, threads_option)

_FRACTION = click.FloatRange(0, 1)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@labelled_options
@click.option("--remove", "remove", type=click.IntRange(min=1), default=None, help="Remove N blocks.")
@click.option("--max-accuracy-drop", type=_FRACTION, default=None,
              help="Stop before top-1 falls more than A below the original (a fraction: 0.01 = one point).")
@click.option("--metric", default=None, metavar="accuracy|fidelity|python:FILE.py:FUNCTION",
              help="What a removal is scored by: top-1 accuracy (labelled data; the default where the data has "
                   "labels), fidelity of the outputs to the original model's (any images; the default without "
                   "labels), or your FUNCTION(outputs, targets) -> score in [0, 1] on a .npz's other arrays.")
@click.option("--max-fidelity-loss", type=_FRACTION, default=None,
              help="With --metric fidelity: stop before the relative L2 error to the original's outputs exceeds E.")
@click.option("--target-param-reduction", type=_FRACTION, default=None,
              help="Stop once parameters are down by R (a fraction, e.g. 0.3).")
@click.option("--target-flop-reduction", type=_FRACTION, default=None,
              help="Stop once MACs are down by R (a fraction, e.g. 0.3).")
@click.option("--rescore", type=click.Choice(["every", "once", "refit"]), default="every", show_default=True,
              help="every: score the remaining blocks again after each removal; once: one ranking; refit (with "
                   "--reconstruct): re-fit after each removal and score the remaining blocks on the re-fitted model.")
@threads_option()
@click.option("--reconstruct", is_flag=True,
              help="After removing the blocks, re-fit the layers that read each removed block's join (least squares) "
                   "so the shallow model matches the original's values there, on the --data images.")
@click.option("--positions", type=click.IntRange(min=1), default=32, show_default=True,
              help="--reconstruct: sampled output positions per image and layer.")
@click.option("--ridge", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="--reconstruct: ridge strength towards the weights the layer had.")
@ray_options(workers_help="--reconstruct: split the re-fit's data into N shards, one Ray worker each (equal to one "
                          "process to float rounding; needs pip install 'onnxmbs[ray]').")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the blocks plan JSON.")
@click.option("--output-model", type=click.Path(dir_okay=False), default=None,
              help="Write the shallow ONNX model (the removed blocks bypassed).")
@click.option("--json", "as_json", is_flag=True, help="Print the blocks plan JSON instead of the table.")
@progress_option()
@clean_errors
def blocks(model: str, remove: int | None, max_accuracy_drop: float | None, metric: str | None,
           max_fidelity_loss: float | None, target_param_reduction: float | None, target_flop_reduction: float | None,
           rescore: str, threads: int | None, reconstruct: bool, positions: int, ridge: float, workers: int | None,
           ray_address: str | None, output: str | None,
           output_model: str | None, as_json: bool, progress: bool | None, batch_size: int, provider: str,
           input_shape, **data) -> None:
    """Block pruning: score each residual block by the accuracy (or fidelity) without it, remove the best, repeat."""
    from onnxmbs.data.labelled import has_labels

    if rescore == "refit" and not reconstruct:
        raise click.UsageError("--rescore refit scores the blocks after each re-fit: add --reconstruct")
    if (workers or ray_address) and not reconstruct:
        raise click.UsageError("--workers and --ray-address split the re-fit: add --reconstruct")
    metric = _metric(metric, max_fidelity_loss, max_accuracy_drop, labelled=has_labels(data["data"]))
    drop = max_fidelity_loss if max_fidelity_loss is not None else max_accuracy_drop
    if all(v is None for v in (remove, drop, target_param_reduction, target_flop_reduction)):
        raise click.UsageError("give a stop rule: --remove N, --max-accuracy-drop A (--max-fidelity-loss E), "
                               "--target-param-reduction R or --target-flop-reduction R")
    for path in (output, output_model):
        refuse_overwrite(path, model, data["data"])
    from onnxmbs.blocks.greedy import Stop, prune_blocks
    from onnxmbs.files import write_json, write_onnx
    from onnxmbs.graph.load import load_model
    from onnxmbs.reports.blocks import blocks_text

    loaded = load_model(model, input_shape=input_shape)
    images = open_labelled_data(loaded, **data) if metric == "top-1" else open_images_data(loaded, **data)
    stop = Stop(remove, drop, target_param_reduction, target_flop_reduction)
    refit = _refit_options(images, batch_size, provider, progress, positions, ridge, workers=workers,
                           ray_address=ray_address) if reconstruct else None
    result = prune_blocks(model, images, stop=stop, metric=_user_metric(metric, data["data"]) or metric,
                          rescore=rescore, batch_size=batch_size, provider=provider, threads=threads,
                          progress=progress, input_shape=input_shape, reconstruct=refit)
    if output:
        write_json(output, result.plan)
    if output_model:
        write_onnx(output_model, result.model, external=_external(model))
    if as_json:
        click.echo(json.dumps(result.plan.to_json(), indent=1))
        return
    click.echo(blocks_text(result.plan))
    for what, path in (("blocks plan", output), ("shallow model", output_model)):
        if path:
            click.echo(f"{what} written to {path}")


def _metric(metric: str | None, fidelity_loss: float | None, accuracy_drop: float | None, *, labelled: bool) -> str:
    """The score's name: the given one, else top-1 with labels and fidelity without."""
    if metric is None:
        metric = "fidelity" if fidelity_loss is not None or not labelled else "top-1"
    metric = "top-1" if metric == "accuracy" else metric
    if metric not in ("top-1", "fidelity") and not metric.startswith("python:"):
        raise click.BadParameter(f"{metric!r} — use accuracy, fidelity or python:FILE.py:FUNCTION",
                                 param_hint="--metric")
    if fidelity_loss is not None and metric != "fidelity":
        raise click.UsageError("--max-fidelity-loss applies to --metric fidelity; with other scores use "
                               "--max-accuracy-drop")
    if fidelity_loss is not None and accuracy_drop is not None:
        raise click.UsageError("give either --max-fidelity-loss or --max-accuracy-drop, not both")
    if metric == "top-1" and not labelled:
        raise click.UsageError("--metric accuracy needs labelled data (a .npz with labels, or one folder per class); "
                               "without labels score by --metric fidelity")
    return metric


def _refit_options(images, batch_size: int, provider: str, progress, positions: int, ridge: float, *,
                   workers: int | None = None, ray_address: str | None = None):
    """--reconstruct: the scoring images (already normalised by the one rule) feed the least squares."""
    from onnxmbs.compact.reconstruct import ReconstructOptions
    from onnxmbs.stats.measure import CalibrationOptions

    norm = images.normalisation  # the one rule's decision for --data: the same flags decide it again here
    given = norm is not None and norm.origin == "flag"
    how = {"preprocess": norm.preset, "mean": norm.mean, "std": norm.std} if given else {}
    data = CalibrationOptions(data=images.x, batch_size=batch_size, provider=provider, progress=progress,
                              workers=workers, ray_address=ray_address, **how)
    return ReconstructOptions(data=data, positions=positions, ridge=ridge)


def _user_metric(metric: str, data: str):
    """The user's metric on the .npz's other arrays (None for the built-in scores)."""
    from onnxmbs.blocks.quality import user_metric

    return user_metric(metric, data) if metric.startswith("python:") else None


def _external(model: str) -> bool:
    """The model keeps its weights in external-data files (so will the shallow model)."""
    import onnx

    from onnxmbs.graph.proto import external_locations

    return bool(external_locations(onnx.load(model, load_external_data=False).graph))
