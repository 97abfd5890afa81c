"""The README's Usage section and `--help` agree: every flag is documented in both, and every default shown."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tuner.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
START = README.index("\n## Usage")
USAGE = README[START : README.index("\n## ", START + 1)]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options `--help` shows (hidden old names and -h/--help left out)."""
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"]


def named(flag: str, text: str) -> bool:
    return re.search(re.escape(flag) + r"(?![\w-])", text) is not None


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_flag_of_help_is_in_the_readme_usage(command: str) -> None:
    missing = [
        a.option_strings[-1]
        for a in visible(subcommands()[command])
        if not any(named(o, USAGE) for o in a.option_strings)
    ]
    # Every option `tuner COMMAND --help` lists is named (by one of its spellings) in the README's Usage section.
    assert missing == [], f"tuner {command}: not in the README's Usage: {missing}"


def test_every_readme_usage_line_runs_only_flags_its_command_has() -> None:
    commands = subcommands()
    checked = 0
    for line in USAGE.splitlines():
        match = re.match(r"tuner ([a-z]+)\b(.*)", line)
        if match is None or match.group(1) not in commands:
            continue
        code = match.group(2).split("  #")[0]  # the comment after a command line is prose
        known = {o for a in commands[match.group(1)]._actions for o in a.option_strings}
        unknown = [flag for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", code) if flag not in known]
        # A command line of the README runs as written: each flag it uses is one its command accepts.
        assert unknown == [], f"README line uses {unknown}: {line}"
        checked += 1
    # The Usage section has a command line for most subcommands: the check above is not vacuous.
    assert checked >= 10


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_with_a_default_shows_it_in_help(command: str) -> None:
    silent = [
        a.option_strings[-1]
        for a in visible(subcommands()[command])
        if a.default not in (None, False, [], argparse.SUPPRESS)
        and a.dest != "storage"
        and "default" not in (a.help or "")
    ]
    # `--help` states each default (the storage's is named without echoing a URL that may hold a password).
    assert silent == [], f"tuner {command}: no default in help for {silent}"
