"""Stage 7 — the command line: parse, call one library function, print, turn errors into exits.

Exit codes: 0 success, 1 the model/data/plan is at fault (one line on stderr, no
traceback), 2 usage errors (click's own).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable

import click

from onnxmbs.errors import MBSError

logger = logging.getLogger("onnxmbs")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def clean_errors(fn: Callable) -> Callable:
    """MBSError -> one line, exit 1; anything unexpected -> one line too (ONNXMBS_DEBUG=1 for the traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MBSError as exc:
            _fail(str(exc))
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("ONNXMBS_DEBUG"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  "(set ONNXMBS_DEBUG=1 for the traceback and please report it)")
    return wrapper


class Shape(click.ParamType):
    name = "shape"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            dims = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a shape like 1,3,224,224", param, ctx)
        if len(dims) not in (3, 4) or any(d <= 0 for d in dims):
            self.fail(f"{value!r} must be 3 or 4 positive integers, e.g. 1,3,224,224", param, ctx)
        return dims


class Floats(click.ParamType):
    name = "floats"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in value.split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxmbs")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """MBS (Macroblock Scaling) for any ONNX CNN: analyse, measure, plan, compact."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("onnxmbs").setLevel(level)


input_shape_option = click.option("--input-shape", type=Shape(), default=None,
                                  help="Fix dynamic input dims, e.g. 1,3,224,224 (NCHW) or 1,224,224,3 (NHWC).")
macroblocks_option = click.option("--macroblocks", "macroblock_map", type=click.Path(dir_okay=False), default=None,
                                  help="JSON {layer: level} to override the grouping by output resolution.")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@macroblocks_option
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON (a plan with p = 1).")
@clean_errors
def analyze(model: str, input_shape, macroblock_map, as_json: bool) -> None:
    """Static view: layers, receptive fields, macroblocks, channel groups, params, MACs (no data needed)."""
    from onnxmbs.analysis import analyze as run_analyze
    from onnxmbs.pipeline import plan_from_statistics, read_macroblock_map
    from onnxmbs.text import analysis_text

    override = read_macroblock_map(macroblock_map) if macroblock_map else None
    result = run_analyze(model, input_shape=input_shape, macroblock_override=override)
    if as_json:
        click.echo(json.dumps(plan_from_statistics(result, None).document, indent=1))
    else:
        click.echo(analysis_text(result))


def refuse_overwrite(output: str | None, *inputs: str) -> None:
    """Outputs never replace the user's inputs."""
    if output and any(os.path.exists(i) and os.path.realpath(output) == os.path.realpath(i) for i in inputs):
        raise click.UsageError(f"-o {output} would overwrite an input file; choose another output path")


def data_options(fn: Callable) -> Callable:
    options = [
        click.option("--data", type=click.Path(), default=None,
                     help="Calibration images: a folder (recursive jpg/png/bmp/webp) or a .npy/.npz array."),
        click.option("--synthetic", type=click.IntRange(min=1), default=None,
                     help="Use N images of random noise instead of data (the plan says so)."),
        click.option("--preprocess", type=click.Choice(["imagenet", "tf", "caffe", "raw"]), default="imagenet",
                     show_default=True, help="Normalisation of images/uint8 arrays."),
        click.option("--mean", type=Floats(), default=None, help="Explicit per-channel mean in [0,1] units."),
        click.option("--std", type=Floats(), default=None, help="Explicit per-channel std in [0,1] units."),
        click.option("--max-images", type=click.IntRange(min=1), default=None, help="Use at most N images."),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--provider", default="auto", show_default=True,
                     help="onnxruntime provider: auto (CUDA when it really works), cpu, cuda."),
        click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."),
        input_shape_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@click.option("--k", type=float, default=None, help="Threshold z = k·L (default 1.0).")
@click.option("--z", type=float, default=None, help="Threshold z in pixels (instead of --k).")
@click.option("--round-to", type=click.IntRange(min=1), default=1, show_default=True,
              help="Round compact widths up to a multiple of N.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the plan JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan JSON to stdout instead of the table.")
@click.option("--stats", type=click.Path(dir_okay=False), default=None,
              help="Reuse counts saved by `onnxmbs profile` instead of --data.")
@macroblocks_option
@clean_errors
def plan(model: str, output: str | None, as_json: bool, k, z, round_to, stats: str | None, macroblock_map,
         **data) -> None:
    """Statistics pass + Algorithm 1: per-macroblock width multipliers and the compact widths."""
    from onnxmbs.pipeline import plan_model, read_macroblock_map
    from onnxmbs.planfile import write_json
    from onnxmbs.text import plan_text

    has_data = data["data"] is not None or data["synthetic"] is not None
    if stats and has_data:
        raise click.UsageError("give either --stats FILE or calibration data (--data/--synthetic), not both")
    if not stats and not has_data:
        raise click.UsageError("give calibration data with --data PATH, or --synthetic N for random noise")
    refuse_overwrite(output, model, *([stats] if stats else []))
    override = read_macroblock_map(macroblock_map) if macroblock_map else None
    if stats:
        from onnxmbs.statsfile import plan_with_stats
        result = plan_with_stats(model, stats, input_shape=data["input_shape"], k=k, z=z, round_to=round_to,
                                 macroblocks=override)
    else:
        result = plan_model(model, k=k, z=z, round_to=round_to, macroblocks=override, **data)
    if output:
        write_json(output, result.document)
    if as_json:
        click.echo(json.dumps(result.document, indent=1))
    else:
        click.echo(plan_text(result.document))
        if output:
            click.echo(f"plan written to {output}")


# Commands of later stages: (module, click object). Each module imports its heavy deps lazily.
COMMANDS = [
    ("onnxmbs.cli_retrain", "retrain"),
    ("onnxmbs.zoo.cli", "zoo"),
    *(("onnxmbs.cli_batch", name) for name in ("profile", "sweep", "report", "check")),
    ("onnxmbs.cli_compact", "compact"),
]


def _register_optional() -> None:
    import importlib

    for module, attr in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a stage not installed in this checkout
            if exc.name != module:
                raise
            continue
        main.add_command(getattr(mod, attr))


_register_optional()

if __name__ == "__main__":  # pragma: no cover
    main()
