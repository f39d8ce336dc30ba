"""``onnxmbs zoo``: list the zoo and export its models as verified ONNX files.

Bad input raises :class:`MBSError`; the group turns it into one line on stderr
(``error: ...``) and exit status 1, as the main CLI does for its own commands.
"""
from __future__ import annotations

import re
from pathlib import Path

import click

from onnxmbs.cli.options import clean_errors, normalisation_options
from onnxmbs.errors import MBSError
from onnxmbs.zoo import ZOO, export, list_models


def _numbers(text: str | None, *, kind: type, option: str) -> list | None:
    if text is None:
        return None
    try:
        return [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        example = "64,128,256,512" if kind is int else "1,1,0.9447,0.7978"
        raise MBSError(f"{option} must be a comma-separated list of numbers, got {text!r} — e.g. {option} {example}") from exc


class _ZooGroup(click.Group):
    """A group whose subcommands' MBSErrors become ``error: <message>`` and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MBSError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(name="zoo", cls=_ZooGroup)
def zoo() -> None:
    """The paper's architectures with width configurations, exported to ONNX."""


def _natural(name: str) -> tuple:
    """resnet20 before resnet110: digits compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


@zoo.command(name="list")
def list_command() -> None:
    """List the zoo's models, their frameworks and default configurations."""
    from onnxmbs.reports.text import table

    rows = []
    for name in sorted(list_models(), key=_natural):
        entry = ZOO[name]
        config = ",".join(f"{v:g}" for v in entry.default_configuration)
        rows.append((name, "/".join(entry.frameworks), f"--{entry.config.kind} {config}", f"{entry.input_size}px",
                     entry.num_classes, entry.description))
    click.echo(table(["model", "frameworks", "default configuration", "input", "classes", "description"], rows))


@zoo.command(name="export")
@click.argument("name")
@click.option("--widths", help="stage widths, comma-separated (ResNets, MobileNetV1, ShuffleNet)")
@click.option("--betas", help="per-resolution β, comma-separated (MobileNetV2, DenseNet-121)")
@click.option("--num-classes", type=int, help="classifier outputs (default: the model's, 10 or 1000)")
@click.option("--input-size", type=int, help="square input size in pixels (default: 32 CIFAR, 224 ImageNet)")
@click.option("--framework", type=click.Choice(["torch", "keras"]), help="builder to use (default: the model's first)")
@normalisation_options
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the ONNX file")
@clean_errors
def export_command(name: str, widths: str | None, betas: str | None, num_classes: int | None,
                   input_size: int | None, framework: str | None, preprocess: str | None, mean, std,
                   output: Path) -> None:
    """Build zoo model NAME and write it as ONNX (dynamic batch), checked in onnxruntime.

    The normalisation the model is meant for (--preprocess/--mean/--std, default imagenet) is
    recorded in the file's metadata (onnxmbs.preprocess), so every command reads its images so."""
    path = export(name, output, widths=_numbers(widths, kind=int, option="--widths"),
                  betas=_numbers(betas, kind=float, option="--betas"), num_classes=num_classes,
                  input_size=input_size, framework=framework, preprocess=preprocess, mean=mean, std=std)
    click.echo(f"wrote {path} (normalisation recorded in its metadata: {preprocess or 'imagenet'}"
               f"{'' if mean is None and std is None else ' with the given mean/std'})")
