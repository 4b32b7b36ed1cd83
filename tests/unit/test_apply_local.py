"""observe → plan → apply end to end over LocalTransport on a temporary root: the real on-host
program run by the system's `python3 -I -S` as on a host, real subprocesses, shell commands
standing in for postfix/doveconf."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from compiler.connectors.local import LocalTransport
from compiler.connectors.transport import CommandResult
from compiler.push.apply import (
    ApplyError,
    apply_plan,
    list_releases,
    make_release_id,
    rollback_release,
)
from compiler.push.hostcall import onhost_script
from compiler.push.observe import observe_host
from compiler.push.plan import make_plan
from compiler.types import Activation, FileTree, Plan, RenderedFile

POSTFIX = Activation(
    "postfix",
    "postfix",
    "reload",
    build=("cp {stage}/etc/postfix/virtual {stage}/etc/postfix/virtual.db",),
    validate=(
        "grep -q '^myhostname' {stage}/etc/postfix/main.cf || "
        "{ echo 'postfix: fatal: myhostname missing' >&2; exit 1; }",
    ),
    apply=("echo postfix >> reloads",),
)
DOVECOT = Activation("dovecot", "dovecot", "reload", apply=("echo dovecot >> reloads",))


@pytest.fixture(autouse=True)
def _run_as_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """These local roots stand for real hosts: run their reload/verify commands too, and find
    the host's `python3` (the system's, not this virtualenv's) on a host's PATH."""
    monkeypatch.setenv("MAILCFG_SERVICES", "run")
    monkeypatch.setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


ACTIVATIONS = (DOVECOT, POSTFIX)


class CountingTransport(LocalTransport):
    """LocalTransport that counts round trips."""

    def __init__(self, host: str, root: Path) -> None:
        super().__init__(host, root)
        self.runs = 0
        self.puts = 0

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        self.runs += 1
        return super().run(command, timeout=timeout)

    def put(self, path: str, content: bytes, mode: int = 0o644) -> None:
        self.puts += 1
        super().put(path, content, mode)


def make_tree(
    main_cf: bytes = b"myhostname = mx1\n", users: bytes = b"a:{BLF-CRYPT}x\n"
) -> FileTree:
    files = [
        RenderedFile("/etc/postfix/main.cf", main_cf, role="postfix"),
        RenderedFile("/etc/postfix/virtual", b"a@example.com a\n", role="postfix"),
        RenderedFile("/etc/dovecot/users", users, 0o640, role="dovecot", sensitive=True),
    ]
    return FileTree({f.path: f for f in files})


def plan_for(t: LocalTransport, tree: FileTree) -> Plan:
    return make_plan(t.host, tree, observe_host(t, tree), ACTIVATIONS)


def apply_tree(t: LocalTransport, tree: FileTree) -> tuple[Plan, str]:
    plan = plan_for(t, tree)
    release = apply_plan(plan, tree, t, release_id=make_release_id(datetime.now(UTC), tree.digest))
    return plan, release.id


@pytest.fixture
def host(tmp_path: Path) -> CountingTransport:
    return CountingTransport("mx1", tmp_path / "root")


def reloads(t: LocalTransport) -> list[str]:
    path = t.root / "reloads"
    return path.read_text().split() if path.exists() else []


def test_first_apply_then_no_changes(host: CountingTransport) -> None:
    tree = make_tree()
    plan, first = apply_tree(host, tree)
    assert [c.kind.value for c in plan.changes] == ["create"] * 3
    assert (host.root / "etc/postfix/virtual.db").exists()
    assert sorted(reloads(host)) == ["dovecot", "postfix"]
    # Steady state: observe is ONE round trip (script already there), nothing to apply.
    host.runs = host.puts = 0
    again = plan_for(host, tree)
    assert (host.runs, host.puts) == (1, 0)
    assert not again.has_changes and again.current_release == first
    release = apply_plan(again, tree, host, release_id="never-used")
    assert release.id == first
    assert (host.runs, host.puts) == (1, 0)  # no-op apply: no round trip at all
    assert [r.id for r in list_releases(host)] == [first]


def test_apply_is_two_round_trips(host: CountingTransport) -> None:
    apply_tree(host, make_tree())
    tree = make_tree(main_cf=b"myhostname = mx2\n")
    plan = plan_for(host, tree)
    host.runs = host.puts = 0
    apply_plan(plan, tree, host, release_id=make_release_id(datetime.now(UTC), tree.digest))
    assert (host.runs, host.puts) == (1, 1)
    assert reloads(host)[-1] == "postfix" and reloads(host).count("dovecot") == 1


def test_script_uploaded_once_and_on_demand(host: CountingTransport) -> None:
    tree = make_tree()
    plan_for(host, tree)
    assert (host.runs, host.puts) == (2, 1)  # missing → upload → retry
    script, _ = onhost_script()
    assert (host.root / script.lstrip("/")).exists()


def test_validate_failure_names_step_and_message(host: CountingTransport) -> None:
    _, first = apply_tree(host, make_tree())
    bad = make_tree(main_cf=b"# nothing\n")
    with pytest.raises(ApplyError) as failure:
        apply_tree(host, bad)
    assert failure.value.step == "validate"
    assert "postfix: fatal: myhostname missing" in failure.value.message
    assert str(failure.value).startswith("mx1: validate: ")
    assert (host.root / "etc/postfix/main.cf").read_bytes() == b"myhostname = mx1\n"
    assert [r.id for r in list_releases(host) if r.current] == [first]


def test_activate_failure_rolls_back(host: CountingTransport, tmp_path: Path) -> None:
    _, first = apply_tree(host, make_tree())
    broken_dovecot = Activation(
        "dovecot",
        "dovecot",
        "reload",
        apply=("echo dovecot >> reloads",),
        verify=("echo 'doveadm: Error: connect(/run/dovecot/doveadm-server) failed' >&2; exit 75",),
    )
    tree = make_tree(users=b"a:{BLF-CRYPT}y\n")
    plan = make_plan(host.host, tree, observe_host(host, tree), (broken_dovecot,))
    with pytest.raises(ApplyError) as failure:
        apply_plan(plan, tree, host, release_id=make_release_id(datetime.now(UTC), tree.digest))
    assert failure.value.step == "verify" and failure.value.rolled_back_to == first
    assert "doveadm-server) failed" in failure.value.message
    assert (host.root / "etc/dovecot/users").read_bytes() == b"a:{BLF-CRYPT}x\n"
    assert (host.root / "etc/dovecot/users").stat().st_mode & 0o777 == 0o640
    assert not plan_for(host, make_tree()).has_changes


def test_drift_detected_and_repaired(host: CountingTransport) -> None:
    tree = make_tree()
    apply_tree(host, tree)
    (host.root / "etc/postfix/main.cf").write_bytes(b"myhostname = hacked\n")
    plan = plan_for(host, tree)
    (change,) = plan.changes
    assert change.drift and change.before == b"myhostname = hacked\n"
    apply_plan(plan, tree, host, release_id=make_release_id(datetime.now(UTC), tree.digest))
    assert (host.root / "etc/postfix/main.cf").read_bytes() == b"myhostname = mx1\n"


def test_sensitive_content_not_sent_back(host: CountingTransport) -> None:
    apply_tree(host, make_tree())
    state = observe_host(host, make_tree(users=b"a:{BLF-CRYPT}NEW\n"))
    assert "/etc/dovecot/users" not in state.previous


def test_rollback_and_releases(host: CountingTransport) -> None:
    _, first = apply_tree(host, make_tree())
    _, second = apply_tree(host, make_tree(main_cf=b"myhostname = mx2\n"))
    release = rollback_release(host, activations=(POSTFIX, DOVECOT))
    assert (release.id, release.previous_id) == (first, second)
    assert (host.root / "etc/postfix/main.cf").read_bytes() == b"myhostname = mx1\n"
    assert [(r.id, r.current) for r in list_releases(host)] == [(first, True), (second, False)]


def test_failed_rollback_leaves_the_host_where_it_was(host: CountingTransport) -> None:
    # The first release's own postfix verify (kept with it: a rollback to it runs that, not
    # what it is offered) fails once the host has the marker.
    silent = dataclasses.replace(
        POSTFIX,
        verify=("if [ -e not-answering ]; then echo 'postfix: not answering' >&2; exit 1; fi",),
    )
    tree = make_tree()
    release_id = make_release_id(datetime.now(UTC), tree.digest)
    plan = plan_for(host, tree)
    first = apply_plan(plan, tree, host, release_id=release_id, role_activations=(silent, DOVECOT))
    _, second = apply_tree(host, make_tree(main_cf=b"myhostname = mx2\n"))
    (host.root / "not-answering").touch()
    warnings: list[str] = []
    with pytest.raises(ApplyError) as failure:
        rollback_release(host, activations=ACTIVATIONS, warn=warnings.append)
    assert failure.value.step == "verify" and "postfix: not answering" in failure.value.message
    assert failure.value.rolled_back_to == second and failure.value.rollback_errors == ()
    assert str(failure.value).startswith("mx1: verify: ")
    assert (host.root / "etc/postfix/main.cf").read_bytes() == b"myhostname = mx2\n"
    releases = [(r.id, r.current) for r in list_releases(host)]
    assert releases == [(first.id, False), (second, True)]
    assert not plan_for(host, make_tree(main_cf=b"myhostname = mx2\n")).has_changes


def test_release_ids_sort_by_time() -> None:
    early = make_release_id(datetime(2024, 1, 2, 3, 4, 5, 6, UTC), "ab" * 32)
    late = make_release_id(datetime(2024, 1, 2, 3, 4, 5, 7, UTC), "00" * 32)
    assert early == "20240102T030405000006Z-abababababab" and early < late


def test_large_trees_send_arguments_as_a_file(host: CountingTransport) -> None:
    """Past Linux's 128 KiB per-argument limit the observe arguments travel as a file."""
    names = [hashlib.sha512(b"%d" % i).hexdigest() for i in range(1200)]  # incompressible
    files = [RenderedFile(f"/etc/many/{name}", name.encode()) for name in names]
    tree = FileTree({f.path: f for f in files})
    plan_for(host, tree)  # uploads the script
    host.runs = host.puts = 0
    state = observe_host(host, tree)
    assert (host.runs, host.puts) == (1, 1)
    assert state.files == {} and not list((host.root / "var/lib/mailcfg/incoming").iterdir())
    apply_tree(host, tree)
    assert len(observe_host(host, tree).files) == 1200
    assert not plan_for(host, tree).has_changes


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_program_is_uploaded_again_not_run(host: CountingTransport, damage: str) -> None:
    """An upload cut short (or a disk that lost the file) leaves the hash-named path holding
    something else: the next call notices (the host checks the whole sha256 before running
    it), uploads the program again and goes on."""
    script, content = onhost_script()
    planted = host.root / script.lstrip("/")
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"" if damage == "empty" else content[: len(content) // 2])
    plan = plan_for(host, make_tree())
    assert (host.runs, host.puts) == (2, 1)  # refused → upload → retry
    assert planted.read_bytes() == content
    apply_plan(plan, make_tree(), host, release_id=make_release_id(datetime.now(UTC), "d" * 64))
    host.runs = host.puts = 0
    assert not plan_for(host, make_tree()).has_changes
    assert (host.runs, host.puts) == (1, 0)  # steady state again: one round trip


def test_interrupted_controller_leaves_the_apply_to_commit(host: CountingTransport) -> None:
    """Ctrl-C while the controller waits: the on-host apply is not killed (a command runs in
    a session of its own, as over SSH) and commits on its own."""
    apply_tree(host, make_tree())
    slow = Activation("postfix", "postfix", "reload", apply=("sleep 1", "echo postfix >> reloads"))
    tree = make_tree(main_cf=b"myhostname = mx2\n")
    plan = make_plan(host.host, tree, observe_host(host, tree), (slow,))
    release_id = make_release_id(datetime.now(UTC), tree.digest)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            apply_plan(plan, tree, host, release_id=release_id)
    finally:
        timer.join()
    current = host.root / "var/lib/mailcfg/current"
    deadline = time.monotonic() + 20
    while current.read_text().strip() != release_id and time.monotonic() < deadline:
        time.sleep(0.05)
    assert current.read_text().strip() == release_id
    assert (host.root / "etc/postfix/main.cf").read_bytes() == b"myhostname = mx2\n"


def test_validate_sees_staged_files_old_enough_for_postfix(host: CountingTransport) -> None:
    """Postfix reads a file modified within the last second again after a ~1.8 s sleep: the
    staged files are complete, so they are given an mtime in the past before validation."""
    age = "$(( $(date +%s) - $(stat -c %Y {stage}/etc/postfix/main.cf) ))"
    checking = Activation(
        "postfix",
        "postfix",
        "reload",
        validate=(f'[ {age} -ge 5 ] || {{ echo "staged main.cf is {age} s old" >&2; exit 1; }}',),
    )
    tree = make_tree()
    plan = make_plan(host.host, tree, observe_host(host, tree), (checking,))
    apply_plan(plan, tree, host, release_id=make_release_id(datetime.now(UTC), tree.digest))
    installed = (host.root / "etc/postfix/main.cf").stat().st_mtime
    assert time.time() - installed < 60  # the installed file is written anew, as before
