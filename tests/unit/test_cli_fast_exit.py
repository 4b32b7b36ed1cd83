"""`python -m compiler.cli` ends `render` and `validate` without the interpreter's teardown
(`cliout.finish`): the same exit status, output and files as the library call, and every other
command, an error and a library caller still end the usual way."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from compiler import cliout
from tests.unit.test_cli import REPO, inv, run, tls_pair

__all__ = ["inv", "tls_pair"]  # fixtures


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compiler.cli", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def files_below(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_render_and_validate_exit_as_the_library_call_does(
    inv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ["--cache", str(tmp_path / "cache")]
    done = cli("render", str(inv), "--out", str(tmp_path / "fast"), *cache)
    assert done.returncode == 0, done.stderr
    code, out, _ = run(capsys, "render", str(inv), "--out", str(tmp_path / "lib"), *cache)
    assert code == 0
    # The same lines (but the directory), flushed before the exit, and the same files.
    assert done.stdout.replace("/fast/", "/lib/") == out and "mx1: " in out
    assert files_below(tmp_path / "fast") == files_below(tmp_path / "lib") != {}
    done = cli("validate", str(inv), *cache)
    assert (done.returncode, done.stdout) == (0, run(capsys, "validate", str(inv), *cache)[1])


def test_an_error_still_ends_the_usual_way(inv: Path, tmp_path: Path) -> None:
    (inv / "domains/example.com.yml").write_text("domain: example.com\naccounts: 5\n")
    done = cli("render", str(inv), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "error(s) in the inventory" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_finish_returns_unless_asked_for_a_fast_command_alone() -> None:
    assert cliout.finish(3, "") == 3  # a library caller (`main(argv)`)
    assert cliout.finish(0, "plan") == 0  # plan and apply may leave work for the exit
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        assert cliout.finish(0, "render") == 0  # another thread runs: no early exit
    finally:
        release.set()
        worker.join()
