"""``onnxmbs evaluate``: accuracy of an ONNX classifier on labelled data, and fidelity to a reference model.

    onnxmbs evaluate model.onnx --data val/ [--reference original.onnx] [--json]
    onnxmbs evaluate compact.onnx --data images/ --reference original.onnx      # no labels needed

With labels: top-1, top-5 (>= 5 classes) and, with ``--reference``, top-1 agreement. With
``--reference``, on any data and for any model whose outputs match the reference's in shape
(detectors, segmenters): per output the relative L2 error, mean cosine similarity and max abs error.
"""
from __future__ import annotations

import json

import click

from onnxmbs.cli.options import clean_errors, labelled_options, open_labelled_data


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@labelled_options
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="The original ONNX model: report the fidelity of MODEL's outputs to its outputs (no labels "
                   "needed), and with labels how often their top-1 predictions agree.")
@click.option("--metric", default=None, metavar="python:FILE.py:FUNCTION",
              help="Your own metric: FUNCTION(outputs, targets) -> float (higher is better), targets being the "
                   ".npz's other arrays (e.g. masks); for detectors and segmenters. No labels needed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@clean_errors
def evaluate(model: str, reference: str | None, metric: str | None, as_json: bool, batch_size: int, provider: str,
             input_shape, **data) -> None:
    """Accuracy of MODEL on labelled data (top-1, top-5 with >= 5 classes), and its fidelity to --reference."""
    from onnxmbs.data.labelled import has_labels
    from onnxmbs.errors import MBSError
    from onnxmbs.graph.load import load_model
    from onnxmbs.stats.accuracy import evaluate as run_evaluate
    from onnxmbs.stats.fidelity import compare

    loaded = load_model(model, input_shape=input_shape)
    labelled = has_labels(data["data"]) and metric is None
    scores = _metric(loaded, reference, metric, data, batch_size=batch_size, provider=provider) if metric else None
    if not labelled and reference is None and scores is None:
        raise MBSError(f"{data['data']} is unlabelled — give labelled data (a .npz with images and labels, or one "
                       "folder per class), or --reference ORIGINAL.onnx to measure fidelity without labels")
    acc = source = None
    if labelled:
        images = open_labelled_data(loaded, **data)
        source = images.source
        acc = run_evaluate(loaded, images, reference=reference, batch_size=batch_size, provider=provider)
    fid = None
    if reference is not None:
        fid = compare(loaded, reference, data["data"], batch_size=batch_size, provider=provider,
                      preprocess=data["preprocess"], mean=data["mean"], std=data["std"],
                      max_images=data["max_images"])
    if as_json:
        doc = {"model": model, "data": source or data["data"], "reference": reference,
               **(acc.to_json() if acc else {}), **({"fidelity": fid.to_json()} if fid else {}),
               **({"metric": {"spec": metric, **scores}} if scores else {})}
        click.echo(json.dumps(doc, indent=1))
        return
    lines = _lines(model, acc, fid, source or data["data"], reference)
    if scores:
        lines += [f"metric {metric.rpartition(':')[2]}  {value:.6g}  ({who})" for who, value in scores.items()]
    click.echo("\n".join(lines))


def _metric(loaded, reference: str | None, spec: str, data: dict, *, batch_size: int, provider: str) -> dict:
    """The user's metric of the model (and of the reference) on ``data``."""
    from onnxmbs.stats.metric import load_metric, measure

    metric = load_metric(spec)
    how = {"batch_size": batch_size, "provider": provider, "preprocess": data["preprocess"], "mean": data["mean"],
           "std": data["std"]}
    scores = {"model": measure(loaded, data["data"], metric, **how)}
    if reference is not None:
        scores["reference"] = measure(reference, data["data"], metric, input_shape=loaded.input.shape, **how)
    return scores


def _lines(model: str, acc, fid, source: str, reference: str | None) -> list[str]:
    lines = []
    if acc is not None:
        lines += [f"{model}: {acc.images} images, {acc.classes} classes ({source})",
                  f"top-1 accuracy  {acc.top1:.2%}  ({round(acc.top1 * acc.images)}/{acc.images})"]
        if acc.top5 is not None:
            lines.append(f"top-5 accuracy  {acc.top5:.2%}")
        if acc.agreement is not None:
            lines.append(f"agreement with {reference}  {acc.agreement:.2%}")
    if fid is not None:
        lines.append(f"fidelity to {reference} on {fid.images} images ({source}):")
        lines += [f"  {o.name}: relative L2 error {o.relative_l2:.4g}, cosine {o.cosine:.6f}, max |diff| "
                  f"{o.max_abs:.4g}" for o in fid.outputs]
    return lines
