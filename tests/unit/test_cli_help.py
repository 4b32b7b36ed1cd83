"""The `mailcfg` command line explains itself: every command and option has help text,
`--version` names the installed version, a bare `mailcfg` prints the help (exit 2, as argparse
exits on a usage error), and `--day` takes only real dates."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from compiler.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def walk_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every subcommand's parser below it (an alias's parser once)."""
    seen: set[int] = set()
    todo = [parser]
    while todo:
        p = todo.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


def test_every_command_and_option_has_help() -> None:
    missing = []
    parsers = list(walk_parsers(build_parser()))
    assert len(parsers) > 10  # the top level and its commands
    for parser in parsers:
        for action in parser._actions:
            name = "/".join(action.option_strings) or action.dest
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{parser.prog}: {name}")
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"{parser.prog}: command {choice.dest}")
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"mailcfg {version('mailcfg')}\n"


def test_bare_mailcfg_prints_usage_and_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "compiler"], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("usage: mailcfg ")
    for command in ("validate", "plan", "apply", "rollback", "unlock", "stats"):
        assert f"    {command} " in proc.stderr


@pytest.mark.parametrize(
    ("day", "message"),
    [
        ("2024-02-30", "'2024-02-30' is no date: day is out of range for month"),
        ("2024-13-01", "'2024-13-01' is no date: month must be in 1..12"),
        ("2024-1-01", "'2024-1-01' is not a day written YYYY-MM-DD"),
        ("20240101", "'20240101' is not a day written YYYY-MM-DD"),
        ("yesterday", "'yesterday' is not a day written YYYY-MM-DD"),
    ],
)
def test_day_must_be_a_real_date(
    day: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", str(tmp_path), "--day", day]) == 1
    err = capsys.readouterr().err
    assert err == f"mailcfg stats: argument --day: {message}\n"
