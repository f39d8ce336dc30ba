"""One declaration per shared option: ``--batch-size``, ``--max-images``, ``--threads``, ``--workers``,
``--ray-address``, ``--progress``, ``--seed``, ``--classes``, ``--round-to`` and ``--provider`` are each
declared once (a factory in onnxmbs/cli/options.py), and every command that has one gets the same type."""
from __future__ import annotations

import re
from pathlib import Path

import click

from onnxmbs.cli import main

CLI = Path(__file__).resolve().parents[1] / "onnxmbs" / "cli"
SHARED = ("--batch-size", "--max-images", "--threads", "--workers", "--ray-address", "--progress", "--seed",
          "--classes", "--round-to", "--provider")


def _commands(group: click.Group):
    for cmd in group.commands.values():
        yield from _commands(cmd) if isinstance(cmd, click.Group) else (cmd,)


def test_each_shared_option_is_declared_once():
    sources = {p.name: p.read_text() for p in CLI.glob("*.py")}
    for name in SHARED:
        where = [f for f, text in sources.items() for _ in re.finditer(r'click\.option\(\s*"' + name + r'[/"]', text)]
        assert where == ["options.py"], f"{name} declared in {where}"


def test_the_pattern_finds_a_declaration():
    assert re.search(r'click\.option\(\s*"--threads[/"]', '@click.option("--threads", type=int)')
    assert re.search(r'click\.option\(\s*"--progress[/"]', 'click.option("--progress/--no-progress")')


def test_commands_share_the_type_of_each_option():
    seen: dict[str, dict[str, object]] = {}
    for cmd in _commands(main):
        for opt in cmd.params:
            for name in set(opt.opts) & set(SHARED):
                seen.setdefault(name, {})[cmd.name] = opt
    assert {"--batch-size", "--max-images", "--threads", "--progress", "--round-to"} <= set(seen)
    for name, options in seen.items():
        kinds = {(type(o.type).__name__, getattr(o.type, "min", None), o.is_flag) for o in options.values()}
        assert len(kinds) == 1, f"{name}: {kinds} across {sorted(options)}"
    assert len(seen["--max-images"]) >= 5 and len(seen["--threads"]) >= 3
