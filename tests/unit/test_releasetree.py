"""A stored release read back from its host (what `mailcfg rollback` shows before it asks):
the rendered files as the release installed them; a record the host answers with is checked
(paths, digests, ids) before anything of it is used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from compiler.connectors.local import LocalTransport
from compiler.push.apply import ReleaseInfo
from compiler.push.hostcall import HostError
from compiler.push.releasetree import choose_release, read_release_tree

RELEASES = Path("var/lib/mailcfg/releases")


def store_release(root: Path, release_id: str, files: dict[str, Any]) -> None:
    """A release as the host stores it: its record and its tree."""
    base = root / RELEASES / release_id
    record: dict[str, Any] = {"id": release_id, "files": {}}
    for path, (content, extra) in files.items():
        target = base / "tree" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        record["files"][path] = {
            "sha256": hashlib.sha256(content).hexdigest(),
            "mode": 0o640,
            "owner": "root",
            "group": "postfix",
            "role": "postfix",
            "sensitive": False,
            **extra,
        }
    (base / "release.json").write_text(json.dumps(record))


def test_reads_the_rendered_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store_release(
        root,
        "r1",
        {
            "/etc/postfix/main.cf": (b"myhostname = mx1\n", {}),
            "/etc/dovecot/users": (b"alice:{hash}\n", {"sensitive": True, "role": "dovecot"}),
            "/etc/postfix/virtual.db": (b"\0db", {"derived": True}),
        },
    )
    tree = read_release_tree(LocalTransport("mx1", root), "r1")
    assert sorted(tree) == ["/etc/dovecot/users", "/etc/postfix/main.cf"]
    main_cf = tree["/etc/postfix/main.cf"]
    assert (main_cf.content, main_cf.mode, main_cf.group) == (
        b"myhostname = mx1\n",
        0o640,
        "postfix",
    )
    assert tree["/etc/dovecot/users"].sensitive


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"/etc/../../outside": (b"x", {})}, "is not an absolute normalised path"),
        ({"etc/postfix/main.cf": (b"x", {})}, "is not an absolute normalised path"),
        ({"/etc/postfix/main.cf": (b"x", {"sha256": "0" * 64})}, "does not match its sha256"),
        ({"/etc/postfix/main.cf": (b"x", {"mode": "rw"})}, "malformed record"),
    ],
)
def test_a_bad_record_is_refused(tmp_path: Path, files: dict[str, Any], message: str) -> None:
    root = tmp_path / "root"
    store_release(root, "r1", files)
    with pytest.raises(HostError, match=message):
        read_release_tree(LocalTransport("mx1", root), "r1")


@pytest.mark.parametrize("release_id", ["../r1", ".hidden", ""])
def test_a_bad_release_id_is_refused(tmp_path: Path, release_id: str) -> None:
    with pytest.raises(HostError, match="bad release id"):
        read_release_tree(LocalTransport("mx1", tmp_path / "root"), release_id)


def test_a_missing_release_is_named(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="release r9 is not stored on this host"):
        read_release_tree(LocalTransport("mx1", tmp_path / "root"), "r9")
    store_release(tmp_path / "root", "r1", {"/etc/postfix/main.cf": (b"x", {})})
    (tmp_path / "root" / RELEASES / "r1/tree/etc/postfix/main.cf").unlink()
    with pytest.raises(HostError, match="r1: a file of its stored tree is missing"):
        read_release_tree(LocalTransport("mx1", tmp_path / "root"), "r1")


def info(release_id: str, previous: str | None, current: bool) -> ReleaseInfo:
    return ReleaseInfo(release_id, "d", previous, None, 1, current)


def test_choose_release() -> None:
    releases = (info("r1", None, False), info("r2", "r1", True))
    assert choose_release("mx1", releases, None) == "r1"
    assert choose_release("mx1", releases, "r2") == "r2"
    with pytest.raises(HostError, match="release r7 is not stored on this host"):
        choose_release("mx1", releases, "r7")
    with pytest.raises(HostError, match="release r1 has no previous release"):
        choose_release("mx1", (info("r1", None, True),), None)
    with pytest.raises(HostError, match="no current release to roll back from"):
        choose_release("mx1", (), None)
