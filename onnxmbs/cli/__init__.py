"""The command line: ``onnxmbs COMMAND``. One module per command group; shared options in ``options``."""
from __future__ import annotations

import logging
import sys

import click

from onnxmbs.cli.batch import check, profile, report, sweep
from onnxmbs.cli.blocks import blocks
from onnxmbs.cli.compact import compact
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
    _show_decisions()


class _DecisionLines(logging.Handler):
    """Collects the library's decisions (e.g. which normalisation a command read images with) and shows
    them, one line each and once, on stderr when the command has finished; an error drops them, so that
    bad input still gets one line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if line not in self.lines:
            self.lines.append(line)

    def flush_lines(self) -> None:
        for line in self.lines:
            click.echo(line, err=True)
        self.lines = []

    def discard(self) -> None:
        self.lines = []


DECISIONS = _DecisionLines()


def _show_decisions() -> None:
    decisions = logging.getLogger("onnxmbs.data.normalisation.decisions")
    DECISIONS.discard()
    decisions.handlers = [DECISIONS]
    decisions.setLevel(logging.INFO)
    decisions.propagate = False
    click.get_current_context().call_on_close(DECISIONS.flush_lines)


for _command in (analyze, plan, profile, sweep, report, check, compact, evaluate, blocks, retrain, handbook, stats,
                 zoo):
    main.add_command(_command)

__all__ = ["main"]
