"""The on-host program under faults, run as a host runs it: an apply killed mid-install and
`recover` (as the agent unit's `ExecStartPre` runs it, from the stable copy) putting the files
back to exactly one release, the way forward past the point of no return, a held lock, what
killed calls leave in `incoming/`, and an apply that writes only the files that changed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from compiler.push.hostcall import onhost_script
from compiler.types import Activation
from tests.unit.onhost_program import HOST_PATH, STATE, SYSTEM_PYTHON, observe
from tests.unit.test_onhost import RELOAD, apply, hold_lock, reloads, tree_of

KILL = {"MAILCFG_TEST_KILL_AFTER_FILES": "2"}
OLD = {"/etc/a": b"a1\n", "/etc/b": b"b1\n", "/etc/c": b"c1\n"}
NEW = {"/etc/a": b"a2\n", "/etc/b": b"b2\n", "/etc/c": b"c2\n", "/etc/d": b"d2\n"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "host"
    (r / STATE).mkdir(parents=True)
    return r


def live(root: Path, paths: list[str]) -> dict[str, bytes]:
    return {
        p: (root / p.lstrip("/")).read_bytes() for p in paths if (root / p.lstrip("/")).exists()
    }


def boot_recover(root: Path) -> dict[str, Any]:
    """`recover` exactly as the agent unit's ExecStartPre runs it: the stable copy, no
    arguments (the root aside, which stands for "/")."""
    program = root / STATE / "onhost.pyz"
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", str(program), "recover", "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        cwd=root.parent,
        env={"PATH": HOST_PATH, "MAILCFG_SERVICES": "run"},
    )
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"], proc
    return doc


def killed_apply(root: Path, files: dict[str, bytes], release_id: str) -> None:
    with pytest.raises(json.JSONDecodeError):  # killed mid-install: no answer at all
        apply(root, tree_of(files), release_id, (RELOAD,), env=KILL)


def test_crash_mid_install_is_rolled_back_by_recover(root: Path) -> None:
    apply(root, tree_of(OLD), "r1", (RELOAD,))
    assert (root / STATE / "onhost.pyz").read_bytes() == onhost_script()[1]
    killed_apply(root, NEW, "r2")
    mixed = live(root, list(NEW))
    assert mixed != OLD and mixed != NEW  # the crash left a mix: two new files, the rest old
    assert observe(root)["interrupted"] == "r2"
    doc = boot_recover(root)
    assert doc["outcome"] == "rolled-back" and doc["release_id"] == "r1"
    assert live(root, list(NEW)) == OLD  # exactly the committed release's files
    assert doc["owed"] == [] and reloads(root) == ["postfix", "postfix"]  # the owed reload ran
    state = observe(root)
    assert state["release_id"] == "r1" and state["interrupted"] is None
    assert not (root / STATE / "pending.json").exists()
    assert sorted(p.name for p in (root / STATE / "releases").iterdir()) == ["r1"]
    assert boot_recover(root)["outcome"] == "nothing"


def test_crash_in_the_first_apply_puts_back_the_files_found_before(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/a").write_bytes(b"before mailcfg\n")
    apply(root, tree_of({"/etc/z": b"z\n"}), "r0")  # installs the stable copy
    (root / STATE / "current").unlink()  # as if r0 had never committed: a first apply
    (root / STATE / "originals.json").unlink()
    killed_apply(root, NEW, "r1")
    assert (root / "etc/a").read_bytes() == b"a2\n"
    doc = boot_recover(root)
    assert doc["outcome"] == "rolled-back" and doc["release_id"] is None
    assert (root / "etc/a").read_bytes() == b"before mailcfg\n"
    assert live(root, ["/etc/b", "/etc/c", "/etc/d"]) == {}


def test_past_the_point_of_no_return_recover_finishes_the_commit(root: Path) -> None:
    apply(root, tree_of(OLD), "r1")
    apply(root, tree_of(NEW), "r2")
    # A crash right after the commit wrote `current` (verify had passed): pending.json stays.
    pending = {"release": "r2", "previous": "r1", "activations": [], "started": 1, "files": {}}
    (root / STATE / "pending.json").write_text(json.dumps(pending))
    doc = boot_recover(root)
    assert doc["outcome"] == "rolled-forward" and doc["release_id"] == "r2"
    assert live(root, list(NEW)) == NEW
    assert not (root / STATE / "pending.json").exists()


def test_a_restart_stays_owed_to_the_next_change(root: Path) -> None:
    apply(root, tree_of(OLD), "r1")
    agent = Activation("agent", "mailcfg-agent", "restart", apply=("echo agent >> reloads",))
    with pytest.raises(json.JSONDecodeError):
        apply(root, tree_of({p: (c, "agent") for p, c in NEW.items()}), "r2", (agent,), env=KILL)
    doc = boot_recover(root)
    assert doc["outcome"] == "rolled-back" and doc["owed"] == ["agent"]
    assert reloads(root) == []  # never from inside the agent's own start
    state = observe(root)
    assert [a["role"] for a in state["pending"]] == ["agent"]
    # The next change runs it, and nothing is owed after.
    assert apply(root, tree_of(OLD), "r3", ())["ok"]
    assert reloads(root) == ["agent"] and observe(root)["pending"] == []


def test_recover_leaves_a_running_change_alone(root: Path) -> None:
    apply(root, tree_of(OLD), "r1")
    killed_apply(root, NEW, "r2")
    mixed = live(root, list(NEW))
    holder = hold_lock(root, '{"command": "apply", "pid": 7, "host": "mx1", "started": 0}')
    try:
        doc = boot_recover(root)
    finally:
        holder.communicate("")
    assert doc["outcome"] == "busy"
    assert doc["warnings"] == [
        "another apply is running on mx1 (pid 7 since 1970-01-01 00:00:00Z): it finishes or "
        "rolls back its change itself"
    ]
    assert live(root, list(NEW)) == mixed


def test_the_next_apply_first_puts_an_interrupted_one_back(root: Path) -> None:
    apply(root, tree_of(OLD), "r1", (RELOAD,))
    killed_apply(root, NEW, "r2")
    doc = apply(root, tree_of({"/etc/a": b"a3\n"}), "r3", (RELOAD,))
    assert doc["ok"] and doc["previous"] == "r1", doc
    # /etc/d, written only by the killed r2, is gone with it; b and c went with r1's manifest.
    assert live(root, list(NEW)) == {"/etc/a": b"a3\n"}
    assert reloads(root) == ["postfix", "postfix"]  # the owed reload merged into r3's


def test_stale_bundles_are_removed_and_incoming_kept_private(root: Path) -> None:
    incoming = root / STATE / "incoming"
    incoming.mkdir(mode=0o755)
    incoming.chmod(0o755)
    (incoming / "killed.tar.gz").write_bytes(b"password hashes")
    os.utime(incoming / "killed.tar.gz", (1, 1))
    (incoming / "just-uploaded.tar.gz").write_bytes(b"another apply's, about to start")
    assert apply(root, tree_of(OLD), "r1")["ok"]
    assert sorted(p.name for p in incoming.iterdir()) == ["just-uploaded.tar.gz"]
    assert incoming.stat().st_mode & 0o777 == 0o700


def test_a_killed_apply_leaves_its_bundle_only_until_the_next_call(root: Path) -> None:
    apply(root, tree_of(OLD), "r1")
    killed_apply(root, NEW, "r2")
    (left,) = (root / STATE / "incoming").iterdir()
    os.utime(left, (1, 1))  # the next call comes later than the grace for fresh uploads
    doc = boot_recover(root)
    assert doc["outcome"] == "rolled-back"
    assert not list((root / STATE / "incoming").iterdir())


def test_a_failed_apply_removes_its_bundle(root: Path) -> None:
    doc = apply(root, tree_of(OLD), "r1", expect="r0")
    assert doc["step"] == "check"
    assert not list((root / STATE / "incoming").iterdir())


def test_only_changed_files_are_written(root: Path) -> None:
    apply(root, tree_of(OLD), "r1")
    before = {p: os.stat(root / p.lstrip("/")) for p in OLD}
    apply(root, tree_of({**OLD, "/etc/b": b"b2\n"}), "r2")
    after = {p: os.stat(root / p.lstrip("/")) for p in OLD}
    for path in ("/etc/a", "/etc/c"):
        assert (after[path].st_ino, after[path].st_mtime_ns) == (
            before[path].st_ino,
            before[path].st_mtime_ns,
        )
    assert after["/etc/b"].st_ino != before["/etc/b"].st_ino
    assert (root / "etc/b").read_bytes() == b"b2\n"
    # A file whose mode drifted is written again even though its content is the same.
    (root / "etc/a").chmod(0o600)
    apply(root, tree_of({**OLD, "/etc/b": b"b2\n", "/etc/e": b"e\n"}), "r3")
    assert (root / "etc/a").stat().st_mode & 0o777 == 0o644
    assert os.stat(root / "etc/c").st_ino == before["/etc/c"].st_ino
