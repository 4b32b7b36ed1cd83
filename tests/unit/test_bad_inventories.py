"""The corpus of hostile and broken inventories (`tests/unit/bad_inventories/`, one defect each).

Each case is laid over `_base/` and run through the real command line, `validate` and then
`render --out`: both must exit 1 without a traceback, name every expected cause and place, print
none of the substrings of its optional `forbid.txt` (what must never leak, e.g. a line of a file
a symlink points to), and write nothing (no rendered file, no cache outside the test's own
directory).
"""

from __future__ import annotations

import io
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from compiler.cli import main

CORPUS = Path(__file__).parent / "bad_inventories"
BASE = CORPUS / "_base"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir() and not p.name.startswith("_"))
_CASE_FILES = ("expect.txt", "forbid.txt")


def _lines(file: Path) -> list[str]:
    return [line for line in file.read_text().splitlines() if line.strip()] if file.exists() else []


def _lay_out(case: Path, dest: Path) -> Path:
    """Copy `_base/`, then the case's own files over it (symlinks stay symlinks)."""
    inv = dest / "inv"
    shutil.copytree(BASE, inv, symlinks=True)
    for src in sorted(case.rglob("*")):
        rel = src.relative_to(case)
        if rel.name in _CASE_FILES and len(rel.parts) == 1:
            continue
        target = inv / rel
        if src.is_symlink():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # a case may replace `domains/` by a link
            target.unlink(missing_ok=True)
            target.symlink_to(os.readlink(src))
        elif src.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(src.read_bytes())
    return inv


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("name", CASES)
def test_bad_inventory_is_refused(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CORPUS / name
    expected = _lines(case / "expect.txt")
    forbidden = _lines(case / "forbid.txt")
    assert expected, f"{name}: expect.txt names nothing"
    inv = _lay_out(case, tmp_path)
    # Relative paths in the inventory (local roots) resolve against the inventory's parent
    # directory, as they would in a CI checkout.
    monkeypatch.chdir(inv)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    for argv in (["validate", "."], ["render", ".", "--out", str(tmp_path / "out")]):
        code, output = _run(argv)
        assert code == 1, f"{name}: {' '.join(argv)} exited {code}:\n{output}"
        assert "Traceback" not in output, output
        for line in expected:
            assert line in output, f"{name}: {line!r} not in:\n{output}"
        for line in forbidden:
            assert line not in output, f"{name}: {line!r} leaked into:\n{output}"

    assert not (tmp_path / "out").exists(), f"{name}: render wrote files for a bad inventory"
    assert not (inv / "hosts").exists(), f"{name}: a local host root was written"
    after = sorted(
        p.relative_to(tmp_path)
        for p in tmp_path.rglob("*")
        if p.relative_to(tmp_path).parts[0] != "xdg-cache"
    )
    assert after == before, f"{name}: files appeared: {sorted(set(after) - set(before))}"
