"""Commands for many models and CI: ``profile``, ``sweep``, ``report``, ``check``.

Exit codes as everywhere: 0 success, 1 a model/data fault or a failed check, 2 usage errors.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from typing import Any

import click

from onnxmbs.cli.options import (check_workers, clean_errors, converge_options, data_options, macroblocks_option,
                                 many_stats_option, one_source, refuse_overwrite, round_to_option, stats_option)
from onnxmbs.cli.values import Count, KValues, OutputFile

logger = logging.getLogger(__name__)


def _path(data: Any) -> str:
    return data if isinstance(data, str) else ""


# ------------------------------------------------------------ profile
class Shard(click.ParamType):
    """``i/n``: shard i (0-based) of n."""
    name = "i/n"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        if not match or not int(match[1]) < int(match[2]):
            self.fail(f"{value!r} is not a shard like 0/4 (shard i of n, 0 <= i < n)", param, ctx)
        return int(match[1]), int(match[2])


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@converge_options()
@click.option("--shard", type=Shard(), default=None,
              help="Count only shard i of n (0-based, e.g. 3/8; cut between whole batches); "
                   "add the shards up with `onnxmbs stats merge`.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Write the counts here (JSON).")
@clean_errors
def profile(model: str, output: str, shard: tuple[int, int] | None, input_shape, statistic: str, calibration,
            converge) -> None:
    """Run the statistics pass once and save the counts for `plan/sweep/report/check --stats`."""
    from dataclasses import replace

    from onnxmbs.reports.text import convergence_text
    from onnxmbs.workflow import sequence

    one_source(calibration, None)
    refuse_overwrite(output, model, _path(calibration.data))
    if shard is not None and (converge is not None or calibration.workers or calibration.ray_address):
        raise click.UsageError("--shard counts one fixed part of the data: leave out --until-converged/--workers")
    check_workers(calibration)
    done = sequence.study(model, sequence.Request(input_shape=input_shape, statistic=statistic, converge=converge,
                                                  calibration=replace(calibration, shard=shard)))
    sequence.save_study(output, done, shard=shard)
    stats, part = done.statistics, f" (shard {shard[0]}/{shard[1]})" if shard else ""
    click.echo(f"{model}: {stats.images} images{part}, {len(stats.taps)} activations counted in {stats.seconds:.1f}s"
               f"{' (SYNTHETIC noise)' if done.source.synthetic else ''}; counts written to {output}")
    if done.convergence is not None:
        click.echo(convergence_text(done.convergence))


# ------------------------------------------------------------ sweep
def _target(**options: float | None):
    from onnxmbs.planning.sweep import Target

    given = [(metric, value) for metric, value in options.items() if value is not None]
    if len(given) > 1:
        raise click.UsageError("give one target: --target-param-reduction, --target-flop-reduction, "
                               "--target-params or --target-flops")
    return Target(*given[0]) if given else None


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@stats_option
@click.option("--k", "k_range", type=KValues(), default="0.6:1.4:0.2", show_default=True,
              help="k values: start:stop:step (stop included) or a list 0.5,1,2.")
@round_to_option
@click.option("--target-param-reduction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Solve for the largest k whose plan removes at least this fraction of params (0.3 = 30%).")
@click.option("--target-flop-reduction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Solve for the largest k whose plan removes at least this fraction of MACs.")
@click.option("--target-params", type=Count(), default=None, help="Solve for the largest k with at most N params.")
@click.option("--target-flops", type=Count(), default=None, help="Solve for the largest k with at most N MACs.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the solved plan JSON here (needs a --target-*).")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep (and solution) as JSON.")
@macroblocks_option
@converge_options()
@clean_errors
def sweep(model: str, stats: str | None, k_range: str, round_to: int | str, output: str | None, as_json: bool,
          target_param_reduction, target_flop_reduction, target_params, target_flops, macroblock_map: str | None,
          input_shape, statistic: str, calibration, converge) -> None:
    """One statistics pass, a plan for every k: β, configuration, params and MACs per k; or solve for a target."""
    from onnxmbs.files import write_json
    from onnxmbs.planning.pipeline import read_macroblock_map
    from onnxmbs.reports.text import convergence_text, solution_text, sweep_text
    from onnxmbs.workflow import sequence

    target = _target(param_reduction=target_param_reduction, flop_reduction=target_flop_reduction,
                     params=target_params, flops=target_flops)
    if output and target is None:
        raise click.UsageError("-o writes the plan solved for a target: add --target-param-reduction, "
                               "--target-flop-reduction, --target-params or --target-flops")
    one_source(calibration, stats)
    refuse_overwrite(output, model, stats or "", _path(calibration.data))
    check_workers(calibration)
    override = read_macroblock_map(macroblock_map) if macroblock_map else None
    request = sequence.Request(input_shape=input_shape, macroblocks=override, statistic=statistic,
                               calibration=calibration, stats=(stats,) if stats else (), converge=converge,
                               ks=k_range, round_to=round_to)
    done = sequence.study(model, request)
    points = done.sweep(k_range)
    solution = done.solve(target) if target is not None else None
    if output and solution is not None:
        write_json(output, done.plan(solution.k).document)
    if as_json:
        click.echo(json.dumps(_sweep_json(model, done.measured, points, target, solution), indent=1))
        return
    click.echo(sweep_text(points, model=model, images=done.statistics.images))
    if done.convergence is not None:
        click.echo(convergence_text(done.convergence))
    if solution is not None:
        click.echo(solution_text(solution))
    if output:
        click.echo(f"plan written to {output}")


def _sweep_json(model: str, measured: Any, points: Any, target: Any, solution: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": model, "images": measured.statistics.images, "sweep": [p.as_dict() for p in points]}
    if solution is not None:
        doc["solution"] = {"metric": target.metric, "target": target.value, "k": solution.k,
                           "k_low": solution.k_low, "k_high": solution.k_high if solution.k_high != float("inf")
                           else None, "achieved": target.achieved(solution.point), **solution.point.as_dict()}
    if measured.convergence is not None:
        doc["convergence"] = measured.convergence.to_json()
    return doc


# ------------------------------------------------------------ report
@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@data_options
@many_stats_option
@click.option("-o", "--output", "outputs", multiple=True, required=True, type=OutputFile("report"),
              help="Report file; the format follows the suffix: .html .md .json .csv (repeatable).")
@click.option("--k", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Threshold z = k·L of each model's plan.")
@click.option("--sweep", "k_range", type=KValues(), default="0.6:1.4:0.2", show_default=True,
              help="k values of the trade-off table and curve (start:stop:step or a list).")
@round_to_option
@converge_options()
@click.option("--blocks", "blocks_files", multiple=True, type=click.Path(dir_okay=False),
              help="Also show a blocks plan from `onnxmbs blocks` (repeatable).")
@click.option("--handbook", "handbook_files", multiple=True, type=click.Path(dir_okay=False),
              help="Also show an accuracy handbook (JSON from `onnxmbs handbook`) with its Figure 5 chart "
                   "(repeatable).")
@click.option("--deployment", "compact_files", multiple=True, type=click.Path(dir_okay=False),
              help="Also show the deployment table of an `onnxmbs compact -o COMPACT.onnx` output (original, "
                   "compact, INT8 with --quantize: params, MACs, size, latency, accuracy or fidelity; repeatable; "
                   "shown in the section of the model it was made from).")
@clean_errors
def report(models: tuple[str, ...], stats: tuple[str, ...], outputs: tuple[str, ...], k: float, k_range: str,
           round_to: int | str, blocks_files: tuple[str, ...], handbook_files: tuple[str, ...],
           compact_files: tuple[str, ...], input_shape, statistic: str, calibration, converge) -> None:
    """Batch report: one statistics pass per model, plan + k-sweep each, as HTML/Markdown/JSON/CSV.

    A model that fails becomes a failure row; the others still run. Exit 1 if any failed.
    """
    from onnxmbs.blocks.document import read_blocks_plan
    from onnxmbs.compact.record import read_deployment
    from onnxmbs.handbook.record import read_handbook
    from onnxmbs.reports.formats import write_report
    from onnxmbs.reports.report import Report, report_settings, report_text
    from onnxmbs.workflow.batch import ReportOptions, report_models

    if not stats and not calibration.has_data:
        raise click.UsageError("give calibration data with --data PATH (or --synthetic N), or --stats FILE(s)")
    for path in outputs:
        refuse_overwrite(path, *models, *stats, *blocks_files, *handbook_files, *compact_files, _path(calibration.data))
    check_workers(calibration)
    options = ReportOptions(k=k, ks=k_range, round_to=round_to, input_shape=input_shape, statistic=statistic,
                            converge=converge)
    blocks = tuple(read_blocks_plan(path) for path in blocks_files)
    handbooks = tuple(read_handbook(path) for path in handbook_files)
    deployments = tuple(read_deployment(path) for path in compact_files)
    rows = report_models(list(models), options=options, stats=stats, calibration=calibration)
    settings = report_settings(options, stats=stats, data=calibration.data, synthetic=calibration.synthetic)
    result = Report(models=rows, settings=settings, blocks=blocks, handbooks=handbooks, deployments=deployments)
    for path in outputs:
        write_report(result, path)
    click.echo(report_text(result))
    click.echo(f"report written to {', '.join(outputs)}")
    if result.failed:
        click.echo(f"error: {len(result.failed)} of {len(result.models)} model(s) failed", err=True)
        sys.exit(1)


# ------------------------------------------------------------ check
@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@data_options
@many_stats_option
@click.option("--max-params", type=Count(), default=None, help="Fail if a model has more parameters (250k, 1.5M).")
@click.option("--max-flops", type=Count(), default=None, help="Fail if a model needs more MACs per image.")
@click.option("--max-redundancy", type=click.FloatRange(0, 1), default=None,
              help="Fail if any macroblock's MBS redundancy r exceeds R (needs --data or --stats).")
@click.option("--baseline", "baselines", multiple=True, type=click.Path(dir_okay=False),
              help="Plan JSON to compare β per macroblock and param reduction with (repeatable: matched by "
                   "model file name; needs --data or --stats).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=None,
              help="Allowed absolute difference to --baseline  [default: 0.02]")
@click.option("--k", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Threshold z = k·L for --max-redundancy (default 1.0).")
@round_to_option
@click.option("--junit", type=click.Path(dir_okay=False), default=None,
              help="Write JUnit XML here (one testcase per model per check).")
@converge_options("--converge-tolerance")
@clean_errors
def check(models: tuple[str, ...], stats: tuple[str, ...], max_params, max_flops, max_redundancy,
          baselines: tuple[str, ...], tolerance, k, round_to: int | str, junit: str | None, input_shape, statistic: str,
          calibration, converge) -> None:
    """CI gate: static limits need no data; --max-redundancy and --baseline need statistics.

    Exit 0 when every check passes, 1 when one fails, 2 on usage errors. With
    $GITHUB_STEP_SUMMARY set, a Markdown summary is appended to it.
    """
    from onnxmbs.reports.gate import append_step_summary, junit_xml, results_text
    from onnxmbs.workflow.gate import GateLimits, run_gate
    from onnxmbs.files import write_atomic

    if stats and calibration.synthetic is not None:
        raise click.UsageError("give either --stats FILE or --synthetic N, not both: a gate must not pass on "
                               "noise when the saved counts were meant")
    if tolerance is not None and not baselines:
        raise click.UsageError("--tolerance applies to --baseline: add --baseline plan.json")
    check_workers(calibration)
    limits = GateLimits(max_params=max_params, max_flops=max_flops, max_redundancy=max_redundancy,
                        baselines=baselines, tolerance=0.02 if tolerance is None else tolerance, k=k,
                        round_to=round_to, input_shape=input_shape, statistic=statistic, converge=converge)
    if limits.needs_statistics and not stats and not calibration.has_data:
        raise click.UsageError("--max-redundancy and --baseline need statistics: give --data PATH, "
                               "--synthetic N or --stats FILE")
    if not limits.needs_statistics and calibration.has_data:
        given = "--data" if calibration.data is not None else "--synthetic"
        logger.warning("%s is not measured: no check here needs statistics (it only sets the input size of a model "
                       "with a dynamic one) — add --max-redundancy R or --baseline PLAN.json, or leave it out", given)
    refuse_overwrite(junit, *models, *stats, *baselines)
    results = run_gate(list(models), limits, stats=stats, calibration=calibration)
    click.echo(results_text(results))
    if junit:
        write_atomic(junit, junit_xml(results))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        append_step_summary(os.environ["GITHUB_STEP_SUMMARY"], results)
    if not all(r.passed for r in results):
        sys.exit(1)
