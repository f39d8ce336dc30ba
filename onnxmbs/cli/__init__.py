"""The command line: ``onnxmbs COMMAND``. One module per command group; shared options in ``options``."""
from __future__ import annotations

import logging
import sys

import click

from onnxmbs.cli.batch import check, profile, report, sweep
from onnxmbs.cli.blocks import blocks
from onnxmbs.cli.compact import compact
from onnxmbs.cli.decisions import show_decisions
from onnxmbs.cli.evaluate import evaluate
from onnxmbs.cli.handbook import handbook
from onnxmbs.cli.plan import analyze, plan
from onnxmbs.cli.retrain import retrain
from onnxmbs.cli.stats import stats
from onnxmbs.cli.zoo import zoo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxmbs")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """MBS (Macroblock Scaling) for any ONNX CNN: analyse, measure, plan, compact."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("onnxmbs").setLevel(level)
    show_decisions()


for _command in (analyze, plan, profile, sweep, report, check, compact, evaluate, blocks, retrain, handbook, stats,
                 zoo):
    main.add_command(_command)

__all__ = ["main"]
