"""Options and error handling shared by every command (their value types: :mod:`onnxmbs.cli.values`).

Exit codes: 0 success, 1 the model/data/plan is at fault (one line on stderr, no
traceback), 2 usage errors and bad option values (click's own).
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from onnxmbs.errors import MBSError
from onnxmbs.data.normalisation import PRESETS
from onnxmbs.cli.decisions import DECISIONS
from onnxmbs.cli.values import Floats, RoundTo, Shape
from onnxmbs.runtime.frameworks import missing_framework

logger = logging.getLogger("onnxmbs")


def _fail(message: str) -> None:
    DECISIONS.discard()  # the error is the one line: decisions made on the way are dropped
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
            needed = missing_framework(exc)  # PyTorch/Keras not installed: name the extra
            if needed is not None:
                _fail(str(needed))
            _fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  "(set ONNXMBS_DEBUG=1 for the traceback and please report it)")
    return wrapper


input_shape_option = click.option("--input-shape", type=Shape(), default=None,
                                  help="Fix dynamic input dims, e.g. 1,3,224,224 (NCHW) or 1,224,224,3 (NHWC).")
statistic_option = click.option(
    "--statistic", type=click.Choice(["extended", "paper"]), default="extended", show_default=True,
    help="extended: convs before SiLU/GELU/HardSwish/LeakyReLU/PReLU... count outputs > 0 (beyond the paper; "
         "ReLU layers count non-zeros, as in the paper); paper: only ReLU-family layers are measured, others p = 1.")
macroblocks_option = click.option("--macroblocks", "macroblock_map", type=click.Path(dir_okay=False), default=None,
                                  help="JSON {layer: level} to override the grouping by output resolution.")


#: The one declaration of the normalisation options; the one rule that reads them is
#: :func:`onnxmbs.data.normalisation.resolve_normalisation` (flag > model metadata > imagenet).
NORMALISATION_OPTIONS = (
    click.option("--preprocess", type=click.Choice(list(PRESETS)), default=None,
                 help="Normalisation of images/uint8 arrays  [default: the model's metadata "
                      "(onnxmbs.preprocess), else imagenet]"),
    click.option("--mean", type=Floats(low=0.0, high=1.0), default=None,
                 help="Explicit per-channel mean in [0,1] pixel units (overrides the preset's)."),
    click.option("--std", type=Floats(positive=True), default=None,
                 help="Explicit per-channel std in [0,1] pixel units (overrides the preset's)."),
)


def normalisation_options(fn: Callable) -> Callable:
    """``--preprocess/--mean/--std`` for a command that reads images outside ``data_options``."""
    for option in reversed(NORMALISATION_OPTIONS):
        fn = option(fn)
    return fn


def refuse_overwrite(output: str | None, *inputs: str) -> None:
    """Outputs never replace the user's inputs."""
    if output and any(os.path.exists(i) and os.path.realpath(output) == os.path.realpath(i) for i in inputs):
        raise click.UsageError(f"-o {output} would overwrite an input file; choose another output path")


#: the values of --provider (onnxmbs.runtime.session.choose_provider reads them)
PROVIDERS = click.Choice(["auto", "cpu", "cuda"], case_sensitive=False)


def provider_option(*, default: str) -> Callable[[Callable], Callable]:
    """``--provider``: the one declaration; commands differ only in the default."""
    return click.option("--provider", type=PROVIDERS, default=default, show_default=True,
                        help="onnxruntime provider: auto (CUDA when it really works), cpu or cuda.")


def max_images_option(*, help: str = "Use at most N images.") -> Callable[[Callable], Callable]:
    """``--max-images``: the one declaration (commands differ only in the help's wording)."""
    return click.option("--max-images", type=click.IntRange(min=1), default=None, help=help)


def batch_size_option(*, default: int, help: str | None = None) -> Callable[[Callable], Callable]:
    """``--batch-size``: the one declaration; the default is the command's (inference 32/64, training 128)."""
    return click.option("--batch-size", type=click.IntRange(min=1), default=default, show_default=True, help=help)


def threads_option(*, default: int | None = None,
                   help: str = "onnxruntime threads (default: all).") -> Callable[[Callable], Callable]:
    """``--threads``: the one declaration."""
    return click.option("--threads", type=click.IntRange(min=1), default=default, show_default=default is not None,
                        help=help)


def progress_option(*, help: str = "Progress bar (default: on a terminal).") -> Callable[[Callable], Callable]:
    """``--progress/--no-progress``: the one declaration (None: a bar only on a terminal)."""
    return click.option("--progress/--no-progress", default=None, help=help)


def seed_option(*, help: str | None = None) -> Callable[[Callable], Callable]:
    """``--seed``: the one declaration."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def classes_option(*, help: str = "Class folder names, one a line, in class-index order (default: sorted folder "
                                  "names).") -> Callable[[Callable], Callable]:
    """``--classes``: the one declaration."""
    return click.option("--classes", type=click.Path(dir_okay=False), default=None, help=help)


def ray_options(*, workers_help: str) -> Callable[[Callable], Callable]:
    """``--workers N`` and ``--ray-address``: the one declaration of each."""
    workers = click.option("--workers", type=click.IntRange(min=1), default=None, help=workers_help)
    address = click.option("--ray-address", default=None,
                           help="Join this Ray cluster (auto = the one started with `ray start`, or HOST:PORT) "
                                "instead of a local Ray.")
    return lambda fn: workers(address(fn))


def one_calibration_source(data: str | None, synthetic: int | None) -> None:
    """Calibration images or noise, never both: a usage error (exit 2) in every command with both options."""
    if data is not None and synthetic is not None:
        raise click.UsageError("give either --data PATH or --synthetic N, not both")


def data_options(fn: Callable) -> Callable:
    """The calibration-data options; the command receives them as one ``calibration`` record
    (:class:`onnxmbs.stats.measure.CalibrationOptions`) plus ``input_shape``."""
    options = [
        click.option("--data", type=click.Path(), default=None,
                     help="Calibration images: a folder (recursive jpg/png/bmp/webp) or a .npy/.npz array."),
        click.option("--synthetic", type=click.IntRange(min=1), default=None,
                     help="Use N images of random noise instead of data (the plan says so)."),
        *NORMALISATION_OPTIONS,
        max_images_option(),
        batch_size_option(default=32),
        provider_option(default="auto"),
        progress_option(),
        ray_options(workers_help="Split the statistics pass over N Ray workers (exact; needs pip install "
                                  "'onnxmbs[ray]')."),
        input_shape_option,
        statistic_option,
    ]

    @functools.wraps(fn)
    def wrapper(*args, data, synthetic, preprocess, mean, std, max_images, batch_size, provider, progress,
                workers, ray_address, **kwargs):
        from onnxmbs.stats.measure import CalibrationOptions

        one_calibration_source(data, synthetic)
        calibration = CalibrationOptions(data=data, synthetic=synthetic, preprocess=preprocess, mean=mean, std=std,
                                         max_images=max_images, batch_size=batch_size, provider=provider,
                                         progress=progress, workers=workers, ray_address=ray_address)
        return fn(*args, calibration=calibration, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def one_source(calibration: Any, stats: str | Sequence[str] | None) -> None:
    """Exactly one source of statistics: calibration data or saved counts."""
    if stats and calibration.has_data:
        raise click.UsageError("give either --stats FILE or calibration data (--data/--synthetic), not both")
    if not stats and not calibration.has_data:
        raise click.UsageError("give calibration data with --data PATH (or --synthetic N), "
                               "or saved counts with --stats FILE from `onnxmbs profile`")


stats_option = click.option("--stats", "stats", type=click.Path(dir_okay=False), default=None,
                            help="Reuse counts saved by `onnxmbs profile` instead of measuring on --data.")
many_stats_option = click.option("--stats", "stats", type=click.Path(dir_okay=False), multiple=True,
                                 help="Counts saved by `onnxmbs profile` (repeatable; matched to models by sha256; "
                                      "models without one are measured on --data).")
round_to_option = click.option(
    "--round-to", type=RoundTo(), default=1, show_default=True,
    help="Round compact widths up to a multiple of N; 'auto': per k, build the compact model at 1, 2, 4, 8 and 16, "
         "time each here with onnxruntime and keep the fastest (ties: fewer parameters); plans record the table.")


def labelled_options(fn: Callable) -> Callable:
    """Options of the commands that measure accuracy on labelled data (evaluate, blocks)."""
    options = [
        click.option("--data", required=True, type=click.Path(),
                     help="Images: labelled (a .npz with images + labels, or a folder with one sub-folder per class) "
                          "for accuracy; without labels (a folder, .npy/.npz) for fidelity to the original "
                          "(evaluate --reference, blocks --metric fidelity)."),
        classes_option(),
        *NORMALISATION_OPTIONS,
        max_images_option(),
        batch_size_option(default=64),
        provider_option(default="cpu"),
        input_shape_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def open_labelled_data(loaded: Any, *, data: str, classes: str | None, preprocess: str | None, mean, std,
                       max_images: int | None) -> Any:
    """The labelled data of ``labelled_options`` for a loaded model's input."""
    from onnxmbs.data.labelled import open_labelled
    from onnxmbs.data.normalisation import resolve_normalisation

    pre = resolve_normalisation(loaded.metadata, preprocess, mean=mean, std=std, where=loaded.path)
    return open_labelled(data, shape=loaded.input.shape, layout=loaded.input.layout, classes=classes,
                         preprocess=pre, max_images=max_images)


def open_images_data(loaded: Any, *, data: str, preprocess: str | None, mean, std, max_images: int | None,
                     **_: Any) -> Any:
    """The images of ``labelled_options``' ``--data`` without labels (for scores against the original)."""
    from onnxmbs.data.labelled import open_images
    from onnxmbs.data.normalisation import resolve_normalisation

    pre = resolve_normalisation(loaded.metadata, preprocess, mean=mean, std=std, where=loaded.path)
    return open_images(data, shape=loaded.input.shape, layout=loaded.input.layout, preprocess=pre,
                       max_images=max_images)


def converge_options(tolerance: str = "--tolerance") -> Callable[[Callable], Callable]:
    """``--until-converged [TOLERANCE T] [--checkpoint N]`` as one ``converge`` argument (a
    ConvergeOptions, or None without the flag); ``check`` names its tolerance differently.
    Goes below ``data_options`` (it reads the ``calibration`` record)."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, until_converged, converge_tolerance, checkpoint, **kwargs):
            kwargs["converge"] = _converge(until_converged, converge_tolerance, checkpoint, kwargs.get("calibration"),
                                           tolerance)
            return fn(*args, **kwargs)

        options = [
            click.option("--until-converged", is_flag=True,
                         help="Stop the statistics pass once the plan has converged (every macroblock's beta bound "
                              "< tolerance and the widths stable); --max-images stays the cap."),
            click.option(tolerance, "converge_tolerance", type=click.FloatRange(min=0, min_open=True), default=None,
                         help="beta bound for --until-converged  [default: 0.5 / widest scaled channel count]"),
            click.option("--checkpoint", type=click.IntRange(min=1), default=None,
                         help="Images between the re-plans of --until-converged  [default: 256]"),
        ]
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper
    return decorate


def _converge(until: bool, value: float | None, checkpoint: int | None, calibration: Any, tolerance: str) -> Any:
    if not until:
        if value is not None or checkpoint is not None:
            raise click.UsageError(f"{tolerance if value is not None else '--checkpoint'} applies to "
                                   "--until-converged: add it")
        return None
    if calibration is not None and not calibration.has_data:
        raise click.UsageError("--until-converged stops a statistics pass: give --data PATH (or --synthetic N)")
    from onnxmbs.planning.convergence import CHECKPOINT, ConvergeOptions

    return ConvergeOptions(tolerance=value, checkpoint=checkpoint or CHECKPOINT)


def check_workers(calibration: Any) -> None:
    """--workers/--ray-address need Ray (a clean exit-1 line naming the extra when it is missing)."""
    if calibration.workers is not None or calibration.ray_address is not None:
        from onnxmbs.runtime.cluster import require_ray

        require_ray("--workers" if calibration.workers is not None else "--ray-address")


def training_options(fn: Callable) -> Callable:
    """The training recipe of ``retrain`` and ``handbook`` (fields of :class:`onnxmbs.train.TrainConfig`)."""
    options = [
        click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True),
        batch_size_option(default=128),
        click.option("--lr", type=float, default=0.1, show_default=True),
        click.option("--momentum", type=float, default=0.9, show_default=True),
        click.option("--weight-decay", type=float, default=1e-4, show_default=True),
        click.option("--schedule", type=click.Choice(["step", "cosine"]), default="step", show_default=True,
                     help="step: lr ÷ 10 at 50% and 75% (the paper's)."),
        click.option("--flip/--no-flip", default=True, show_default=True,
                     help="Random horizontal flips (off for digits/text)."),
        click.option("--crop-pad", type=click.IntRange(min=0), default=4, show_default=True,
                     help="Random-crop padding (0: off)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
