"""``onnxmbs analyze`` and ``onnxmbs plan``: one model, its static view and its plan."""
from __future__ import annotations

import json

import click

from onnxmbs.cli.options import (check_workers, clean_errors, converge_options, data_options, input_shape_option,
                                 macroblocks_option, one_source, refuse_overwrite, round_to_option, statistic_option,
                                 stats_option)
from onnxmbs.cli.values import positive_float


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@macroblocks_option
@statistic_option
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON (a plan with p = 1).")
@clean_errors
def analyze(model: str, input_shape, macroblock_map, statistic: str, as_json: bool) -> None:
    """Static view: layers, receptive fields, macroblocks, channel groups, params, MACs (no data needed)."""
    from onnxmbs.graph.analysis import analyze as run_analyze
    from onnxmbs.planning.pipeline import plan_from_statistics, read_macroblock_map
    from onnxmbs.reports.text import analysis_text

    override = read_macroblock_map(macroblock_map) if macroblock_map else None
    result = run_analyze(model, input_shape=input_shape, macroblock_override=override, statistic=statistic)
    if as_json:
        click.echo(json.dumps(plan_from_statistics(result, None).document.to_json(), indent=1))
    else:
        click.echo(analysis_text(result))


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@click.option("--k", type=positive_float, default=None, help="Threshold z = k·L (default 1.0).")
@click.option("--z", type=positive_float, default=None, help="Threshold z in pixels (instead of --k).")
@round_to_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the plan JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan JSON to stdout instead of the table.")
@stats_option
@macroblocks_option
@converge_options()
@clean_errors
def plan(model: str, output: str | None, as_json: bool, k, z, round_to, stats: str | None, macroblock_map,
         input_shape, statistic: str, calibration, converge) -> None:
    """Statistics pass + Algorithm 1: per-macroblock width multipliers and the compact widths."""
    from onnxmbs.files import write_json
    from onnxmbs.planning.pipeline import read_macroblock_map
    from onnxmbs.workflow.plan import plan_measured, plan_with_stats
    from onnxmbs.reports.text import plan_text

    if k is not None and z is not None:
        raise click.UsageError("give either --k or --z, not both")
    one_source(calibration, stats)
    refuse_overwrite(output, model, *([stats] if stats else []))
    check_workers(calibration)
    override = read_macroblock_map(macroblock_map) if macroblock_map else None
    if stats:
        result = plan_with_stats(model, stats, input_shape=input_shape, k=k, z=z, round_to=round_to,
                                 macroblocks=override, statistic=statistic)
    else:
        result = plan_measured(model, calibration, input_shape=input_shape, k=k, z=z, round_to=round_to,
                               macroblocks=override, converge=converge, statistic=statistic)
    if output:
        write_json(output, result.document)
    if as_json:
        click.echo(json.dumps(result.document.to_json(), indent=1))
    else:
        click.echo(plan_text(result.document))
        rounding = result.document.extra.get("rounding")
        if rounding:
            times = ", ".join(f"{c['round_to']}: {c['latency_ms']:.3f} ms" for c in rounding["candidates"])
            click.echo(f"round-to auto: {rounding['chosen']} (compact latency by rounding: {times}; original "
                       f"{rounding['original_ms']:.3f} ms; onnxruntime CPU, batch {rounding['batch']}, "
                       f"{rounding['threads']} thread(s))")
        if output:
            click.echo(f"plan written to {output}")


