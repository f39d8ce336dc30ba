"""``onnxmbs compact MODEL --plan plan.json -o compact.onnx``: write the smaller ONNX file.

Exit codes: 0 success, 1 the model/plan is at fault (one line), 2 usage errors.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from onnxmbs.units import human

from onnxmbs.cli.options import (batch_size_option, classes_option, clean_errors, input_shape_option, max_images_option,
                                 normalisation_options, progress_option, ray_options, refuse_overwrite, seed_option,
                                 threads_option)

if TYPE_CHECKING:
    from onnxmbs.compact.writer import CompactResult

WEIGHTS = ("inherit", "random")  # onnxmbs.compact.writer.WEIGHTS / SELECT (not imported: keep `onnxmbs -h` fast)
SELECT = ("nonzero", "l1", "greedy")
QUANTIZE = ("int8",)  # onnxmbs.compact.quantize.FORMATS / METHODS
QUANTIZE_METHODS = ("minmax", "percentile", "entropy")


def _change(before: float, after: float) -> str:
    return f"{-100.0 * (1 - after / before):+.1f} %" if before else "n/a"


def compact_text(result: CompactResult, output: str) -> str:
    """The summary ``onnxmbs compact`` prints."""
    from onnxmbs.compact.writer import sidecar_path

    cut = sum(1 for c, k in result.widths.values() if k < c)
    lines = [
        f"compact model written to {output} (record: {sidecar_path(output)})",
        f"parameters  {result.params:,} -> {result.params_compact:,} ({_change(result.params, result.params_compact)}); "
        f"plan predicted {result.params_predicted:,}",
        f"MACs        {human(result.flops)} -> {human(result.flops_compact)} ({_change(result.flops, result.flops_compact)})",
        f"file size   {human(result.bytes_original)}B -> {human(result.bytes_compact)}B "
        f"({_change(result.bytes_original, result.bytes_compact)})",
    ]
    lat = result.latency
    if lat is not None:
        lines.append(f"latency     {lat.original_ms:.3f} ms -> {lat.compact_ms:.3f} ms (speed-up x{lat.speedup:.2f}; "
                     f"onnxruntime CPU, batch {lat.batch}, median of {lat.repeats}, {lat.threads} thread(s))")
        if lat.speedup < 1 and any(k % 8 for c, k in result.widths.values() if k < c):
            lines.append("hint        widths that are not multiples of 8 can run slower on CPU kernels; "
                         "plan with --round-to 8")
    lines.append(f"weights     {result.weights}ed; channels chosen by {result.select}; {cut} channel group(s) cut"
                 if result.weights == "inherit" else
                 f"weights     random (He-normal); {cut} channel group(s) cut")
    rec = result.reconstruction
    if rec is not None:
        lines.append(reconstruction_text(rec))
    if result.accuracy is not None:
        lines.append(accuracy_text(result.accuracy))
    if result.fidelity is not None:
        fid = result.fidelity
        lines += [f"fidelity    {o.name}: relative L2 error to the original {o.relative_l2:.4g}, cosine {o.cosine:.6f} "
                  f"(on {fid.fidelity.images} unlabelled images of {fid.data})" for o in fid.fidelity.outputs]
    if result.deployment is not None:
        lines.append(deployment_text(result.deployment))
    if result.inexact and rec is None:
        lines.append(f"note        inherited weights of {len(result.inexact)} grouped conv(s) are approximate "
                     f"(kept channels cross their groups): {', '.join(result.inexact[:3])} — fine-tune")
    if result.copies:
        extra = result.params_compact - result.params_predicted
        lines.append(f"note        {len(result.copies)} shared tensor(s) stored once per cut their uses need "
                     + (f"(+{extra:,} parameters beyond this older plan's count)" if extra else "(counted in the plan)"))
    return "\n".join(lines)


def reconstruction_text(rec) -> str:
    """One line (two with inherited layers) on what the reconstruction did."""
    n = len(rec.layers)
    before = sum(r.error_inherited for r in rec.layers) / n if n else 0.0
    after = sum(r.error_fitted for r in rec.layers) / n if n else 0.0
    where = f" in {rec.shards} shards on Ray" if rec.shards > 1 else ""
    text = (f"reconstruct {n} layer(s) re-fitted in {rec.waves} wave(s) on {rec.images} images{where} "
            f"({rec.seconds:.1f} s); mean relative error {before:.4f} -> {after:.4f}")
    if rec.skipped:
        names = ", ".join(f"{name} ({why})" for name, why in rec.skipped[:3])
        text += f"\nnote        {len(rec.skipped)} layer(s) keep inherited weights: {names}"
    return text


def accuracy_text(acc) -> str:
    """Measured top-1 of original and compact, and their agreement."""
    o, c = acc.original, acc.compact
    return (f"accuracy    top-1 {o.top1:.2%} -> {c.top1:.2%} ({100 * (c.top1 - o.top1):+.2f} points); "
            f"same prediction on {c.agreement:.2%} of {c.images} labelled images")


def deployment_text(dep) -> str:
    """What ``--quantize int8`` wrote and measured."""
    lat, size = dep.latency_ms, dep.bytes
    text = (f"int8        {dep.path} (record: {dep.path}.json): {human(size['int8'])}B; latency original "
            f"{lat['original']:.3f} ms, compact {lat['compact']:.3f} ms, INT8 {lat['int8']:.3f} ms "
            f"(x{dep.speedup:.2f} vs the original); calibrated on {dep.quantized.images} images "
            f"({dep.quantized.method})")
    if dep.accuracy is not None:
        acc = dep.accuracy
        text += (f"\nint8        top-1 original {acc['original'].top1:.2%}, compact {acc['compact'].top1:.2%}, "
                 f"INT8 {acc['int8'].top1:.2%} (same prediction as the original on {acc['int8'].agreement:.2%})")
    elif dep.fidelity is not None:
        fid = dep.fidelity
        text += (f"\nint8        relative L2 error to the original's outputs: compact "
                 f"{fid['compact'].worst_relative_l2:.4f}, INT8 {fid['int8'].worst_relative_l2:.4f} "
                 f"(on {dep.fidelity_data}; pass labelled --eval-data for accuracy)")
    return text


def _reconstruct_options(data, preprocess, mean, std, max_images, batch_size, positions, ridge, seed, progress, *,
                         workers: int | None = None, ray_address: str | None = None):
    from onnxmbs.compact.writer import CalibrationOptions, ReconstructOptions

    options = CalibrationOptions(data=data, preprocess=preprocess, mean=mean, std=std, max_images=max_images,
                                 batch_size=batch_size, progress=progress, seed=seed, workers=workers,
                                 ray_address=ray_address)
    return options, ReconstructOptions(data=options, positions=positions, ridge=ridge, seed=seed)


def _quantize_options(options, method: str):
    from onnxmbs.compact.quantize import QuantizeOptions

    return QuantizeOptions(data=options, method=method)


def _evaluation(path: str, preprocess: str | None, mean, std):
    from onnxmbs.compact.writer import CalibrationOptions

    return CalibrationOptions(data=path, preprocess=preprocess, mean=mean, std=std, batch_size=64, provider="cpu")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False),
              help="The plan JSON written by `onnxmbs plan -o`.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Write the compact ONNX here.")
@click.option("--weights", type=click.Choice(WEIGHTS), default="inherit", show_default=True,
              help="Keep the surviving weights, or re-initialise them (He-normal) to retrain from scratch.")
@click.option("--select", type=click.Choice(SELECT), default="nonzero", show_default=True,
              help="Keep the channels most often non-zero (measured), those with the largest filter L1 norm, or "
                   "those that best reconstruct the layers reading them (greedy, needs --data).")
@click.option("--force", is_flag=True, help="Accept a plan made for a different model file (sha256 mismatch).")
@seed_option(help="Seed of --weights random.")
@click.option("--repeats", type=click.IntRange(min=0), default=5, show_default=True,
              help="Latency runs per model (median; 0 skips the timing).")
@threads_option(default=1, help="onnxruntime intra-op threads for the timing.")
@click.option("--reconstruct", is_flag=True,
              help="Re-fit the layers behind every cut (least squares) so the outputs match the original's on --data.")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Images for --reconstruct / --select greedy: a folder (recursive) or a .npy/.npz array.")
@normalisation_options
@max_images_option(help="Use at most N images of --data.")
@batch_size_option(default=16, help="Images per onnxruntime run while reconstructing.")
@click.option("--positions", type=click.IntRange(min=1), default=32, show_default=True,
              help="Sampled output positions per image and layer (bounds the memory of the least squares).")
@click.option("--ridge", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="Ridge strength towards the inherited weights, relative to the data's scale.")
@ray_options(workers_help="--reconstruct: split the data into N shards, one Ray worker each, and sum their normal "
                          "equations (equal to one process to float rounding; needs pip install 'onnxmbs[ray]').")
@progress_option(help="Progress bars (default: on a terminal).")
@click.option("--eval-data", type=click.Path(exists=True), default=None,
              help="Images to measure the compact model on: with labels (a .npz with labels, or one folder per "
                   "class) the top-1 of original and compact and their agreement; without labels the fidelity of "
                   "its outputs to the original's. Use images that --data does not hold.")
@classes_option(help="Class folder names of --eval-data, one a line, in class-index order (default: sorted).")
@click.option("--quantize", type=click.Choice(QUANTIZE), default=None,
              help="Also write the compact model quantized to INT8 (QDQ, onnxruntime's quantizer) as "
                   "OUTPUT-stem.int8.onnx, calibrated on --data.")
@click.option("--quantize-method", type=click.Choice(QUANTIZE_METHODS), default="minmax", show_default=True,
              help="How --quantize calibrates activation ranges on --data.")
@input_shape_option
@clean_errors
def compact(model: str, plan_path: str, output: str, weights: str, select: str, force: bool, seed: int,
            repeats: int, threads: int, reconstruct: bool, data: str | None, preprocess: str | None, mean, std,
            max_images: int | None, batch_size: int, positions: int, ridge: float, workers: int | None,
            ray_address: str | None, progress: bool | None, eval_data: str | None, classes: str | None, quantize: str | None, quantize_method: str,
            input_shape) -> None:
    """Write the compact ONNX model of a plan: real channel surgery, checked, timed."""
    from onnxmbs.compact.writer import write_compact

    from onnxmbs.compact.record import int8_path

    refuse_overwrite(output, model, plan_path)
    if (reconstruct or select == "greedy" or quantize) and data is None:
        raise click.UsageError("--reconstruct, --select greedy and --quantize need calibration images: add --data PATH")
    if quantize:
        refuse_overwrite(str(int8_path(output)), model, plan_path, *(p for p in (data, eval_data) if p))
    if reconstruct and weights != "inherit":
        raise click.UsageError("--reconstruct starts from the inherited weights; drop --weights random")
    if eval_data is not None and data is not None and os.path.realpath(eval_data) == os.path.realpath(data):
        raise click.UsageError("--eval-data is --data: measure on images the reconstruction did not see")
    if (workers or ray_address) and not reconstruct:
        raise click.UsageError("--workers and --ray-address split the reconstruction: add --reconstruct")
    options, rec = _reconstruct_options(data, preprocess, mean, std, max_images, batch_size, positions, ridge, seed,
                                        progress, workers=workers,
                                        ray_address=ray_address) if data is not None else (None, None)
    evaluation = _evaluation(eval_data, preprocess, mean, std) if eval_data is not None else None
    quantizing = _quantize_options(options, quantize_method) if quantize else None
    result = write_compact(model, plan_path, output, weights=weights, select=select, input_shape=input_shape,
                           force=force, seed=seed, latency_repeats=repeats, threads=threads,
                           reconstruct=rec if reconstruct else None, data=options, evaluation=evaluation,
                           classes=classes, quantize=quantizing)
    click.echo(compact_text(result, output))
