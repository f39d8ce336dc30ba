"""Decision lines: what the library decided on the user's behalf (which normalisation a command read
images with), shown once each on stderr when the command ends, and dropped when it fails."""
from __future__ import annotations

import logging

import click


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


def show_decisions() -> None:
    decisions = logging.getLogger("onnxmbs.data.normalisation.decisions")
    DECISIONS.discard()
    decisions.handlers = [DECISIONS]
    decisions.setLevel(logging.INFO)
    decisions.propagate = False
    click.get_current_context().call_on_close(DECISIONS.flush_lines)
