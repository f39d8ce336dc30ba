"""``onnxmbs compact MODEL --plan plan.json -o compact.onnx``: write the smaller ONNX file.

Exit codes: 0 success, 1 the model/plan is at fault (one line), 2 usage errors.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from onnxmbs.units import human

from onnxmbs.cli.options import clean_errors, input_shape_option, refuse_overwrite

if TYPE_CHECKING:
    from onnxmbs.compact.writer import CompactResult

WEIGHTS = ("inherit", "random")  # onnxmbs.compact.writer.WEIGHTS / SELECT (not imported: keep `onnxmbs -h` fast)
SELECT = ("nonzero", "l1")


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
    if result.inexact:
        lines.append(f"note        inherited weights of {len(result.inexact)} grouped conv(s) are approximate "
                     f"(kept channels cross their groups): {', '.join(result.inexact[:3])} — fine-tune")
    if result.copies:
        extra = result.params_compact - result.params_predicted
        lines.append(f"note        {len(result.copies)} shared tensor(s) stored once per cut their uses need "
                     + (f"(+{extra:,} parameters beyond this older plan's count)" if extra else "(counted in the plan)"))
    return "\n".join(lines)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False),
              help="The plan JSON written by `onnxmbs plan -o`.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Write the compact ONNX here.")
@click.option("--weights", type=click.Choice(WEIGHTS), default="inherit", show_default=True,
              help="Keep the surviving weights, or re-initialise them (He-normal) to retrain from scratch.")
@click.option("--select", type=click.Choice(SELECT), default="nonzero", show_default=True,
              help="Keep the channels most often non-zero (measured), or those with the largest filter L1 norm.")
@click.option("--force", is_flag=True, help="Accept a plan made for a different model file (sha256 mismatch).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --weights random.")
@click.option("--repeats", type=click.IntRange(min=0), default=5, show_default=True,
              help="Latency runs per model (median; 0 skips the timing).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime intra-op threads for the timing.")
@input_shape_option
@clean_errors
def compact(model: str, plan_path: str, output: str, weights: str, select: str, force: bool, seed: int,
            repeats: int, threads: int, input_shape) -> None:
    """Write the compact ONNX model of a plan: real channel surgery, checked, timed."""
    from onnxmbs.compact.writer import write_compact

    refuse_overwrite(output, model, plan_path)
    result = write_compact(model, plan_path, output, weights=weights, select=select, input_shape=input_shape,
                           force=force, seed=seed, latency_repeats=repeats, threads=threads)
    click.echo(compact_text(result, output))
