"""``onnxmbs evaluate``: top-1/top-5 accuracy of an ONNX classifier on labelled data.

    onnxmbs evaluate model.onnx --data val/ [--reference other.onnx] [--json]
"""
from __future__ import annotations

import json

import click

from onnxmbs.cli.options import clean_errors, labelled_options, open_labelled_data


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@labelled_options
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="Another ONNX model: also report how often its top-1 prediction agrees.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@clean_errors
def evaluate(model: str, reference: str | None, as_json: bool, batch_size: int, provider: str, input_shape,
             **data) -> None:
    """Accuracy of MODEL on labelled data (top-1, top-5 with >= 5 classes), with onnxruntime."""
    from onnxmbs.graph.load import load_model
    from onnxmbs.stats.accuracy import evaluate as run_evaluate

    loaded = load_model(model, input_shape=input_shape)
    labelled = open_labelled_data(loaded, **data)
    acc = run_evaluate(loaded, labelled, reference=reference, batch_size=batch_size, provider=provider)
    if as_json:
        click.echo(json.dumps({"model": model, "data": labelled.source, "reference": reference, **acc.to_json()},
                              indent=1))
        return
    click.echo(f"{model}: {acc.images} images, {acc.classes} classes ({labelled.source})")
    click.echo(f"top-1 accuracy  {acc.top1:.2%}  ({round(acc.top1 * acc.images)}/{acc.images})")
    if acc.top5 is not None:
        click.echo(f"top-5 accuracy  {acc.top5:.2%}")
    if acc.agreement is not None:
        click.echo(f"agreement with {reference}  {acc.agreement:.2%}")
