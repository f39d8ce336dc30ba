"""``onnxmbs blocks``: remove whole residual blocks, ranked by the accuracy measured without each.

    onnxmbs blocks model.onnx --data val/ --remove 3 -o blocks.json --output-model shallow.onnx
"""
from __future__ import annotations

import json

import click

from onnxmbs.cli.options import (clean_errors, labelled_options, open_labelled_data, progress_option, refuse_overwrite,
                                 threads_option)

_FRACTION = click.FloatRange(0, 1)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@labelled_options
@click.option("--remove", "remove", type=click.IntRange(min=1), default=None, help="Remove N blocks.")
@click.option("--max-accuracy-drop", type=_FRACTION, default=None,
              help="Stop before top-1 falls more than A below the original (a fraction: 0.01 = one point).")
@click.option("--target-param-reduction", type=_FRACTION, default=None,
              help="Stop once parameters are down by R (a fraction, e.g. 0.3).")
@click.option("--target-flop-reduction", type=_FRACTION, default=None,
              help="Stop once MACs are down by R (a fraction, e.g. 0.3).")
@click.option("--rescore", type=click.Choice(["every", "once"]), default="every", show_default=True,
              help="every: score the remaining blocks again after each removal; once: one ranking.")
@threads_option()
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the blocks plan JSON.")
@click.option("--output-model", type=click.Path(dir_okay=False), default=None,
              help="Write the shallow ONNX model (the removed blocks bypassed).")
@click.option("--json", "as_json", is_flag=True, help="Print the blocks plan JSON instead of the table.")
@progress_option()
@clean_errors
def blocks(model: str, remove: int | None, max_accuracy_drop: float | None, target_param_reduction: float | None,
           target_flop_reduction: float | None, rescore: str, threads: int | None, output: str | None,
           output_model: str | None, as_json: bool, progress: bool | None, batch_size: int, provider: str,
           input_shape, **data) -> None:
    """Block pruning: score each residual block by the accuracy without it, remove the best, repeat."""
    if all(v is None for v in (remove, max_accuracy_drop, target_param_reduction, target_flop_reduction)):
        raise click.UsageError("give a stop rule: --remove N, --max-accuracy-drop A, --target-param-reduction R "
                               "or --target-flop-reduction R")
    for path in (output, output_model):
        refuse_overwrite(path, model, data["data"])
    from onnxmbs.blocks.greedy import Stop, prune_blocks
    from onnxmbs.files import write_json, write_onnx
    from onnxmbs.graph.load import load_model
    from onnxmbs.reports.blocks import blocks_text

    loaded = load_model(model, input_shape=input_shape)
    labelled = open_labelled_data(loaded, **data)
    stop = Stop(remove, max_accuracy_drop, target_param_reduction, target_flop_reduction)
    result = prune_blocks(model, labelled, stop=stop, rescore=rescore, batch_size=batch_size, provider=provider,
                          threads=threads, progress=progress, input_shape=input_shape)
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


def _external(model: str) -> bool:
    """The model keeps its weights in external-data files (so will the shallow model)."""
    import onnx

    from onnxmbs.graph.proto import external_locations

    return bool(external_locations(onnx.load(model, load_external_data=False).graph))
