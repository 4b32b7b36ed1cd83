"""Golden render snapshots: each case of tests/golden/cases.py renders byte-for-byte to the
tree under tests/golden/<case>/ (file metadata in its MANIFEST).

Rewrite the snapshots after an intended change with MAILCFG_UPDATE_GOLDEN=1, then review the
diff in git.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults
from compiler.types import FileTree

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def _cases() -> ModuleType:
    spec = importlib.util.spec_from_file_location("golden_cases", GOLDEN / "cases.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _cases().CASES


def render_case(name: str) -> FileTree:
    inv, host = CASES[name]()
    roles = load_roles(default_roles_dir())
    return render_host(resolve_host(inv, host, role_defaults(roles)), roles)


def manifest(tree: FileTree) -> str:
    rows = [
        f"{p} {f.mode:04o} {f.owner}:{f.group} role={f.role}"
        + (" sensitive" if f.sensitive else "")
        for p, f in ((p, tree[p]) for p in tree)
    ]
    return "\n".join(rows) + "\n"


def write_golden(directory: Path, tree: FileTree) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "MANIFEST").write_text(manifest(tree))
    for path in tree:
        target = directory / "files" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tree[path].content)


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case: str) -> None:
    tree = render_case(case)
    directory = GOLDEN / case
    if os.environ.get("MAILCFG_UPDATE_GOLDEN") == "1":
        write_golden(directory, tree)
    assert (directory / "MANIFEST").read_text() == manifest(tree)
    on_disk = sorted(
        "/" + str(p.relative_to(directory / "files"))
        for p in (directory / "files").rglob("*")
        if p.is_file()
    )
    assert on_disk == list(tree)
    for path in tree:
        expected = (directory / "files" / path.lstrip("/")).read_bytes()
        assert tree[path].content == expected, f"{case}: {path} differs from the golden file"


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_is_deterministic(case: str) -> None:
    assert render_case(case).digest == render_case(case).digest
