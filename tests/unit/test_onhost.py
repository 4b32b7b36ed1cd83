"""The on-host program run as a host runs it, against a temporary root: the zip the controller
ships, by the system's `python3 -I -S` (not this virtualenv's), from a directory of its own.
Stage/build/validate/install/commit, rollback, lock and stale lock, crash repair, pruning."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from compiler.push.apply import make_bundle
from compiler.push.hostcall import activation_to_json
from compiler.types import Activation, FileTree, Plan, RenderedFile
from tests.unit.onhost_program import STATE, SYSTEM_PYTHON, call, observe


def tree_of(files: dict[str, bytes | tuple[bytes, str]], **meta: Any) -> FileTree:
    out = {}
    for path, spec in files.items():
        content, role = spec if isinstance(spec, tuple) else (spec, "postfix")
        out[path] = RenderedFile(path, content, role=role, **meta)
    return FileTree(out)


def apply(
    root: Path,
    tree: FileTree,
    release_id: str,
    activations: tuple[Activation, ...] = (),
    *extra: str,
    keep: int = 5,
    expect: str | bool | None = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    current_file = root / STATE / "current"
    if expect is False:
        current = current_file.read_text().strip() if current_file.exists() else None
    else:
        current = expect if isinstance(expect, str) else None
    plan = Plan("h", (), activations, tree.digest, current)
    bundle = make_bundle(
        plan, tree, activations=activations, release_id=release_id, keep_releases=keep
    )
    where = f"/{STATE}/incoming/{release_id}.tar.gz"
    (root / where.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / where.lstrip("/")).write_bytes(bundle)
    return call(root, "apply", {"bundle": where}, *extra, env=env)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "host"
    (r / STATE).mkdir(parents=True)
    return r


def reloads(root: Path) -> list[str]:
    path = root / "reloads"
    return path.read_text().split() if path.exists() else []


RELOAD = Activation("postfix", "postfix", "reload", apply=("echo postfix >> reloads",))


def test_observe_empty_host(root: Path) -> None:
    doc = observe(root, {"/etc/a": ["00", "root", "root"]})
    assert doc["release_id"] is None and doc["files"] == {} and doc["managed"] == {}
    assert doc["interrupted"] is None


def test_apply_installs_records_and_commits(root: Path) -> None:
    tree = tree_of({"/etc/postfix/main.cf": b"a\n", "/etc/dovecot/x": (b"x\n", "dovecot")})
    doc = apply(root, tree, "r1", (RELOAD,))
    assert doc == {"ok": True, "release_id": "r1", "previous": None, "warnings": []}
    assert (root / "etc/postfix/main.cf").read_bytes() == b"a\n"
    assert (root / STATE / "current").read_text() == "r1\n"
    assert not (root / STATE / "pending.json").exists()
    assert (root / STATE / "lock").read_text() == ""  # released and cleared
    assert not list((root / STATE / "incoming").iterdir())  # bundle removed
    assert reloads(root) == ["postfix"]
    # The agent's state is below (traversable), mailcfg's own copies are not for others.
    assert oct((root / STATE).stat().st_mode & 0o777) == "0o711"
    for private in ("releases", "originals", "staging", "incoming"):
        assert oct((root / STATE / private).stat().st_mode & 0o777) == "0o700"
    assert not [p for p in (root / STATE).iterdir() if p.is_file() and p.stat().st_mode & 0o077
                and p.name != "current"]  # fmt: skip
    record = json.loads((root / STATE / "releases/r1/release.json").read_text())
    assert record["tree_digest"] == tree.digest
    assert set(record["files"]) == {"/etc/postfix/main.cf", "/etc/dovecot/x"}
    observed = observe(root)
    assert observed["release_id"] == "r1"
    assert observed["files"]["/etc/postfix/main.cf"]["mode"] == 0o644
    assert observed["managed"]["/etc/dovecot/x"]["role"] == "dovecot"


def test_observe_returns_content_only_when_different_and_not_sensitive(root: Path) -> None:
    tree = FileTree(
        {
            "/etc/a": RenderedFile("/etc/a", b"a\n", role="postfix"),
            "/etc/s": RenderedFile("/etc/s", b"SECRET\n", 0o600, role="dovecot", sensitive=True),
        }
    )
    apply(root, tree, "r1")
    (root / "etc/a").write_bytes(b"edited\n")
    (root / "etc/s").write_bytes(b"OTHERSECRET\n")
    (root / "etc/b").parent.mkdir(exist_ok=True)
    (root / "etc/b").write_bytes(b"b\n")
    want = {p: [f.sha256[:16], "root", "root"] for p, f in tree.items()}
    want["/etc/b"] = ["ffff", "root", "root"]
    doc = call(root, "observe", {"paths": want, "sensitive": [], "needs": None})
    previous = {p: base64.b64decode(v) for p, v in doc["previous"].items()}
    assert previous == {"/etc/a": b"edited\n", "/etc/b": b"b\n"}
    assert "SECRET" not in json.dumps(doc)  # sensitive by the release's manifest


def test_derived_maps_built_installed_first_and_carried_over(root: Path) -> None:
    postmap = Activation(
        "postfix",
        "postfix",
        "reload",
        build=("cp {stage}/etc/postfix/virtual {stage}/etc/postfix/virtual.db",),
        apply=("echo postfix >> reloads",),
    )
    tree = tree_of({"/etc/postfix/virtual": b"a b\n", "/etc/dovecot/d": (b"1\n", "dovecot")})
    apply(root, tree, "r1", (postmap,))
    assert (root / "etc/postfix/virtual.db").read_bytes() == b"a b\n"
    record = json.loads((root / STATE / "releases/r1/release.json").read_text())
    assert record["files"]["/etc/postfix/virtual.db"]["derived"] is True
    assert "/etc/postfix/virtual.db" not in observe(root)["managed"]
    # Only dovecot changes: postfix's build does not run, its derived map is kept.
    tree2 = tree_of({"/etc/postfix/virtual": b"a b\n", "/etc/dovecot/d": (b"2\n", "dovecot")})
    apply(root, tree2, "r2", (Activation("dovecot", "dovecot", "reload"),))
    assert (root / "etc/postfix/virtual.db").read_bytes() == b"a b\n"
    record = json.loads((root / STATE / "releases/r2/release.json").read_text())
    assert "/etc/postfix/virtual.db" in record["files"]


def test_validate_failure_touches_nothing(root: Path) -> None:
    apply(root, tree_of({"/etc/postfix/main.cf": b"good\n"}), "r1")
    bad = Activation(
        "postfix",
        "postfix",
        "reload",
        validate=(
            "echo 'postfix: fatal: bad parameter in {stage}/etc/postfix/main.cf' >&2; exit 1",
        ),
        apply=("echo postfix >> reloads",),
    )
    doc = apply(root, tree_of({"/etc/postfix/main.cf": b"bad\n"}), "r2", (bad,))
    assert doc["ok"] is False and doc["step"] == "validate"
    assert "fatal: bad parameter" in doc["message"]
    assert "releases/r2/tree/etc/postfix/main.cf" in doc["message"]  # {stage} substituted
    assert (root / "etc/postfix/main.cf").read_bytes() == b"good\n"
    assert (root / STATE / "current").read_text() == "r1\n"
    assert not (root / STATE / "pending.json").exists()
    assert not (root / STATE / "releases/r2").exists()
    assert reloads(root) == []


def test_activate_failure_reinstalls_previous_release(root: Path) -> None:
    apply(root, tree_of({"/etc/postfix/main.cf": b"v1\n", "/etc/postfix/gone": b"g\n"}), "r1")
    failing = Activation(
        "postfix",
        "postfix",
        "reload",
        apply=(
            "echo postfix >> reloads",
            "echo 'postfix/master: fatal: bind 0.0.0.0 port 25'; false",
        ),
    )
    tree2 = tree_of({"/etc/postfix/main.cf": b"v2\n", "/etc/postfix/new": b"n\n"})
    doc = apply(root, tree2, "r2", (failing,))
    assert doc["ok"] is False and doc["step"] == "activate"
    assert "fatal: bind 0.0.0.0 port 25" in doc["message"]
    assert doc["rolled_back_to"] == "r1" and doc["rollback_errors"][0].startswith(
        "reload after rollback"
    )
    assert (root / "etc/postfix/main.cf").read_bytes() == b"v1\n"
    assert (root / "etc/postfix/gone").read_bytes() == b"g\n"
    assert not (root / "etc/postfix/new").exists()
    assert (root / STATE / "current").read_text() == "r1\n"
    assert reloads(root) == ["postfix", "postfix"]  # the failed apply, then the rollback


def test_verify_failure_on_first_apply_restores_original_files(root: Path) -> None:
    (root / "etc/postfix").mkdir(parents=True)
    (root / "etc/postfix/main.cf").write_bytes(b"debian default\n")
    (root / "etc/postfix/main.cf").chmod(0o640)
    failing = Activation("postfix", "postfix", "reload", verify=("echo 'not answering'; exit 3",))
    doc = apply(
        root, tree_of({"/etc/postfix/main.cf": b"mine\n", "/etc/postfix/x": b"x"}), "r1", (failing,)
    )
    assert doc["step"] == "verify" and doc["rolled_back_to"] is None
    assert doc["rollback_errors"] == []
    assert (root / "etc/postfix/main.cf").read_bytes() == b"debian default\n"
    assert (root / "etc/postfix/main.cf").stat().st_mode & 0o777 == 0o640
    assert not (root / "etc/postfix/x").exists()
    assert not (root / STATE / "current").exists()
    assert not (root / STATE / "pending.json").exists()


def test_deleted_files_removed_on_next_release(root: Path) -> None:
    apply(root, tree_of({"/etc/a": b"a", "/etc/b": b"b"}), "r1")
    apply(root, tree_of({"/etc/a": b"a"}), "r2")
    assert not (root / "etc/b").exists() and (root / "etc/a").exists()


def test_plan_made_against_another_release_is_refused(root: Path) -> None:
    apply(root, tree_of({"/etc/a": b"1"}), "r1")
    doc = apply(root, tree_of({"/etc/a": b"2"}), "r2", expect=None)
    assert doc["step"] == "check" and "plan again" in doc["message"]
    assert (root / "etc/a").read_bytes() == b"1"


def hold_lock(root: Path, record: str) -> subprocess.Popen[str]:
    """Another process holding the host lock (with `record` in it) until its stdin closes."""
    lock = root / STATE / "lock"
    holder = subprocess.Popen(
        [
            SYSTEM_PYTHON,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0)\n"
            f"os.write(fd, {record.encode()!r})\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
            "os.ftruncate(fd, 0)\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def test_lock_held_refuses_second_apply_after_a_bounded_wait(root: Path) -> None:
    record = '{"command": "apply", "pid": 4242, "host": "other", "started": 1700000000}'
    holder = hold_lock(root, record)
    try:
        started = time.monotonic()
        doc = apply(root, tree_of({"/etc/a": b"1"}), "r1", env={"MAILCFG_LOCK_WAIT": "0.5"})
        assert time.monotonic() - started >= 0.5
        assert doc["step"] == "lock"
        assert doc["message"] == (
            "another apply is running on other (pid 4242 since 2023-11-14 22:13:20Z); "
            "waited 0.5s for it"
        )
        assert not (root / "etc/a").exists()
        assert not list((root / STATE / "incoming").iterdir())  # its bundle is gone too
    finally:
        holder.communicate("")
    assert apply(root, tree_of({"/etc/a": b"1"}), "r1")["ok"]


def test_lock_released_during_the_wait_lets_the_apply_go_on(root: Path) -> None:
    holder = hold_lock(root, '{"command": "apply", "pid": 1, "host": "h", "started": 1}')
    release = threading.Timer(0.5, holder.communicate, ("",))
    release.start()
    try:
        doc = apply(root, tree_of({"/etc/a": b"1"}), "r1", env={"MAILCFG_LOCK_WAIT": "20"})
    finally:
        release.join()
    assert doc["ok"], doc
    assert (root / "etc/a").read_bytes() == b"1"


def test_stale_lock_is_broken_and_reported(root: Path) -> None:
    (root / STATE / "lock").write_text('{"pid": 999999999, "host": "mx1", "started": 1}')
    doc = apply(root, tree_of({"/etc/a": b"1"}), "r1")
    assert doc["ok"]
    assert doc["warnings"] == [
        'broke a stale lock left by a process that is gone: {"pid": 999999999, "host": "mx1", '
        '"started": 1}'
    ]


def test_crash_mid_activate_is_repaired_by_next_apply(root: Path) -> None:
    apply(root, tree_of({"/etc/a": b"1"}), "r1")
    # The first reload kills the on-host process itself (a real crash: no cleanup runs).
    crashing = Activation(
        "postfix",
        "postfix",
        "reload",
        apply=(
            "if [ ! -e crashed ]; then touch crashed; kill -9 $PPID; sleep 5; fi",
            "echo postfix >> reloads",
        ),
    )
    tree2 = tree_of({"/etc/a": b"2"})
    with pytest.raises(json.JSONDecodeError):  # killed: no answer at all
        apply(root, tree2, "r2", (crashing,))
    assert (root / "etc/a").read_bytes() == b"2"  # installed, never reloaded
    assert (root / STATE / "current").read_text() == "r1\n"
    observed = observe(root)
    assert observed["interrupted"] == "r2"
    assert [a["role"] for a in observed["pending"]] == ["postfix"]
    # The next apply (plan: no file change, owed activation) reloads and commits.
    doc = apply(root, tree2, "r3", (crashing,))
    assert doc["ok"], doc
    assert any("stale lock" in w for w in doc["warnings"])
    assert reloads(root) == ["postfix"]
    assert (root / STATE / "current").read_text() == "r3\n"
    assert observe(root)["interrupted"] is None


def test_old_releases_pruned(root: Path) -> None:
    for i in range(6):
        apply(root, tree_of({"/etc/a": str(i).encode()}), f"r{i}", keep=3)
    assert sorted(p.name for p in (root / STATE / "releases").iterdir()) == ["r3", "r4", "r5"]
    listing = call(root, "releases", {})
    assert [r["id"] for r in listing["releases"]] == ["r3", "r4", "r5"]
    assert [r["current"] for r in listing["releases"]] == [False, False, True]
    assert listing["releases"][2]["previous"] == "r4"


def test_rollback_to_previous_and_forward_again(root: Path) -> None:
    apply(root, tree_of({"/etc/a": b"1", "/etc/only1": b"x"}), "r1")
    apply(root, tree_of({"/etc/a": b"2", "/etc/d": (b"d", "dovecot")}), "r2")
    acts = [
        activation_to_json(RELOAD),
        activation_to_json(
            Activation("dovecot", "dovecot", "reload", apply=("echo dovecot >> reloads",))
        ),
        activation_to_json(
            Activation("agent", "agent", "reload", apply=("echo agent >> reloads",))
        ),
    ]
    doc = call(root, "rollback", {"to": None, "activations": acts})
    assert doc["ok"] and doc["release_id"] == "r1" and doc["previous"] == "r2"
    assert (root / "etc/a").read_bytes() == b"1" and (root / "etc/only1").exists()
    assert not (root / "etc/d").exists()
    assert sorted(reloads(root)) == ["dovecot", "postfix"]  # roles whose files differ only
    doc = call(root, "rollback", {"activations": acts, "to": "r2"})
    assert doc["ok"] and (root / "etc/a").read_bytes() == b"2"
    assert call(root, "rollback", {"to": "nope", "activations": []})["message"] == (
        "release nope is not stored on this host"
    )


def test_rollback_runs_the_target_releases_own_commands(root: Path) -> None:
    """A rollback to r1 verifies with r1's commands (the port r1's files name), not with those
    of the inventory it is made from (which may name the port of r2, or a third)."""

    def on_port(port: str) -> Activation:
        return Activation("srs", "postsrsd", "restart", verify=(f"echo {port} >> verified",))

    apply(root, tree_of({"/etc/p": (b"10001", "srs")}), "r1", (on_port("10001"),))
    apply(root, tree_of({"/etc/p": (b"10011", "srs")}), "r2", (on_port("10011"),))
    offered = [activation_to_json(on_port("10021"))]  # the inventory changed once more
    doc = call(root, "rollback", {"to": None, "activations": offered})
    assert doc["ok"], doc
    assert (root / "verified").read_text().split() == ["10001", "10011", "10001"]


def two_releases(root: Path) -> None:
    apply(root, tree_of({"/etc/a": b"1", "/etc/only1": b"x"}), "r1")
    apply(root, tree_of({"/etc/a": b"2", "/etc/only2": b"y"}), "r2")


def assert_still_at_r2(root: Path) -> None:
    assert (root / "etc/a").read_bytes() == b"2" and (root / "etc/only2").read_bytes() == b"y"
    assert not (root / "etc/only1").exists()
    assert (root / STATE / "current").read_text() == "r2\n"
    listing = call(root, "releases", {})
    assert [(r["id"], r["current"]) for r in listing["releases"]] == [("r1", False), ("r2", True)]


def test_rollback_whose_verify_fails_restores_the_release_it_left(root: Path) -> None:
    two_releases(root)
    silent = Activation(
        "postfix",
        "postfix",
        "reload",
        apply=("echo postfix >> reloads",),
        verify=("echo 'postfix: not answering on port 25' >&2; exit 1",),
    )
    doc = call(root, "rollback", {"to": None, "activations": [activation_to_json(silent)]})
    assert doc["ok"] is False and doc["step"] == "verify"
    assert "not answering on port 25" in doc["message"]
    assert doc["rolled_back_to"] == "r2" and doc["rollback_errors"] == []
    assert_still_at_r2(root)
    assert not (root / STATE / "pending.json").exists()
    assert reloads(root) == ["postfix", "postfix"]  # the rollback's reload, then the restore's


def test_rollback_whose_reload_fails_restores_like_a_failed_apply(root: Path) -> None:
    two_releases(root)
    broken = Activation(
        "postfix",
        "postfix",
        "reload",
        apply=("echo postfix >> reloads", "echo 'postfix/master: fatal: bind port 25'; false"),
    )
    doc = call(root, "rollback", {"to": "r1", "activations": [activation_to_json(broken)]})
    assert doc["ok"] is False and doc["step"] == "activate"
    assert "fatal: bind port 25" in doc["message"]
    assert doc["rolled_back_to"] == "r2"
    assert doc["rollback_errors"][0].startswith("reload after rollback: ")
    assert_still_at_r2(root)
    # The reload is still owed (as after a failed apply whose restore could not reload).
    assert observe(root)["pending"][0]["role"] == "postfix"


def test_owners_applied_when_real(root: Path) -> None:
    tree = tree_of({"/etc/a": b"1"}, owner="nobody", group="nogroup", mode=0o640)
    doc = apply(root, tree, "r1", (), "--owners", "real")
    assert doc["ok"], doc
    st = (root / "etc/a").stat()
    import grp
    import pwd

    assert pwd.getpwuid(st.st_uid).pw_name == "nobody"
    assert grp.getgrgid(st.st_gid).gr_name == "nogroup"
    assert st.st_mode & 0o777 == 0o640


def test_unknown_owner_fails_at_stage(root: Path) -> None:
    tree = tree_of({"/etc/a": b"1"}, owner="no-such-user-mailcfg")
    doc = apply(root, tree, "r1", (), "--owners", "real")
    assert doc["step"] == "stage" and "unknown user 'no-such-user-mailcfg'" in doc["message"]
    assert not (root / "etc/a").exists()


def test_missing_tool_is_skipped_on_local_root_only(root: Path) -> None:
    act = Activation("postfix", "postfix", "reload", validate=("no-such-tool-mailcfg -c {stage}",))
    doc = apply(root, tree_of({"/etc/a": b"1"}), "r1", (act,))
    assert doc["ok"] and doc["warnings"][0].startswith("validate skipped on a local root")


def test_bundle_path_traversal_rejected(root: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("release.json", b"{}"), ("tree/../../../etc/evil", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / STATE / "incoming").mkdir()
    (root / STATE / "incoming/b.tar.gz").write_bytes(buf.getvalue())
    doc = call(root, "apply", {"bundle": f"/{STATE}/incoming/b.tar.gz"})
    assert doc["ok"] is False and "not an absolute file path" in doc["message"]
    assert not (root.parent / "etc/evil").exists()


def test_corrupt_bundle_is_a_clear_error(root: Path) -> None:
    (root / STATE / "incoming").mkdir()
    (root / STATE / "incoming/b.tar.gz").write_bytes(b"not a tar")
    doc = call(root, "apply", {"bundle": f"/{STATE}/incoming/b.tar.gz"})
    assert doc["ok"] is False and doc["step"] == "stage" and "ReadError" in doc["message"]


def test_local_root_runs_no_service_commands_by_default(root: Path) -> None:
    """A directory root (the demo / preview target) must never reload this machine's services."""
    tree = tree_of({"/etc/postfix/main.cf": b"a = 1\n"})
    reload = Activation(
        "postfix",
        "postfix",
        "reload",
        apply=("echo reloaded >> reloads",),
        verify=("echo verified >> reloads",),
    )
    plan = Plan("h", (), (reload,), tree.digest, None)
    bundle = make_bundle(plan, tree, activations=(reload,), release_id="r1", keep_releases=5)
    where = f"/{STATE}/incoming/r1.tar.gz"
    (root / where.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / where.lstrip("/")).write_bytes(bundle)
    doc = call(root, "apply", {"bundle": where}, services="auto")
    assert doc["ok"] and (root / "etc/postfix/main.cf").read_bytes() == b"a = 1\n"
    assert not (root / "reloads").exists()
    assert any("skipped: a local root runs no services" in w for w in doc["warnings"])


@pytest.mark.skipif(os.geteuid() != 0, reason="postfix check and the tools lock need root")
def test_two_directory_roots_validated_at_once_take_turns(tmp_path: Path) -> None:
    """Two roots applied at once on one machine, as the example's mx1 and mx2 are, each
    running the real `postfix check` on a Postfix whose queue directories are missing (a
    Postfix never started, as in a fresh image): without the machine-wide tools lock both make
    them at once and one fails (`mkdir: ... File exists`, most of the time here)."""
    main_cf = (Path("/etc/postfix/main.cf").read_bytes(), "postfix")
    master_cf = (Path("/etc/postfix/master.cf").read_bytes(), "postfix")
    check = Activation(
        "postfix", "postfix", "reload", validate=("postfix -c {stage}/etc/postfix check",)
    )
    for attempt in range(4):
        queue = tmp_path / f"queue{attempt}"
        queue.mkdir()
        setting = f"\nqueue_directory = {queue}\n".encode()
        tree = tree_of(
            {
                "/etc/postfix/main.cf": (main_cf[0] + setting, "postfix"),
                "/etc/postfix/master.cf": master_cf,
            }
        )
        roots = [tmp_path / f"mx{n}-{attempt}" for n in (1, 2)]
        for r in roots:
            (r / STATE).mkdir(parents=True)
        with ThreadPoolExecutor(2) as pool:
            docs = list(
                pool.map(partial(apply, tree=tree, release_id="r1", activations=(check,)), roots)
            )
        assert [d["ok"] for d in docs] == [True, True], docs
        assert (queue / "incoming").is_dir()
