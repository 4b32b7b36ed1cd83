"""The release store under `/var/lib/mailcfg`: which release is current, each release's record,
the activations an interrupted change still owes, and the originals mailcfg found.

    current                      the current release's id
    releases/<id>/release.json   its record (written at commit: no record, never committed)
    releases/<id>/tree/          its files as installed (rendered and derived)
    pending.json                 a change between install and commit: what it owes
    originals.json, originals/   what was at a path before mailcfg first managed it

These files are the host's own (written by this program), so they are read as stored, not
checked like a document from the controller.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from typing import NotRequired, TypedDict, cast

from .fileops import name_of_gid, name_of_uid, read_json, write_atomic, write_json
from .hostroot import Host, StepFailed
from .wire import ActivationDoc, FileMeta

Manifest = dict[str, FileMeta]
KEEP_EVERY_RELEASE = 1 << 30  # a rollback or a recovery prunes nothing: the releases stay


class ReleaseRecord(TypedDict):
    """`releases/<id>/release.json`: the bundle's document as committed."""

    id: str
    tree_digest: str
    keep_releases: int
    files: Manifest  # rendered and derived files
    activations: list[ActivationDoc]
    previous: str | None
    installed_at: int
    agent: str | None  # the agent install `current` points at (records of older versions lack it)
    role_activations: NotRequired[list[ActivationDoc]]  # every role's (older records lack it)


class PendingRecord(TypedDict):
    """`pending.json`: a change whose live files may be installed but whose activations may
    not have run. `recover` puts the files back to `previous` (`files` says which paths the
    change may have touched; records of older versions lack it) and the reloads still owed stay
    here, with `release` and `previous` then both the restored release, for the next change."""

    release: str
    previous: str | None
    activations: list[ActivationDoc]
    started: int
    files: Manifest


class Original(TypedDict):
    mode: int
    owner: str
    group: str


def current_release(host: Host) -> str | None:
    try:
        with open(host.state_path("current"), encoding="utf-8") as f:
            value = f.read().strip()
    except FileNotFoundError:
        return None
    return value or None


def load_release(host: Host, release_id: str) -> ReleaseRecord:
    doc = read_json(os.path.join(host.release_dir(release_id), "release.json"))
    if not isinstance(doc, dict):
        raise StepFailed("input", f"release {release_id} is not stored on this host")
    return cast(ReleaseRecord, doc)


def current_manifest(host: Host) -> tuple[str | None, Manifest]:
    """The current release and the files (rendered and derived) it installed."""
    cur = current_release(host)
    return (cur, load_release(host, cur)["files"]) if cur else (None, {})


def read_pending(host: Host) -> PendingRecord | None:
    return cast("PendingRecord | None", read_json(host.state_path("pending.json")))


def write_pending(
    host: Host,
    release_id: str,
    previous: str | None,
    acts: list[ActivationDoc],
    files: Manifest,
) -> None:
    record: PendingRecord = {
        "release": release_id,
        "previous": previous,
        "activations": acts,
        "started": int(time.time()),
        "files": files,
    }
    write_json(host.state_path("pending.json"), record)


def clear_pending(host: Host) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(host.state_path("pending.json"))


def read_originals(host: Host) -> dict[str, Original | None]:
    return cast("dict[str, Original | None]", read_json(host.state_path("originals.json"), {}))


def original_copy(host: Host, host_path: str) -> str:
    return host.state_path("originals", host_path.lstrip("/"))


def save_originals(host: Host, paths: Manifest, old_manifest: Manifest) -> None:
    """Keep the file found at a path before mailcfg first manages it, for rollback."""
    index = read_originals(host)
    changed = False
    for path in paths:
        if path in old_manifest or path in index:
            continue
        local = host.path(path)
        if os.path.isfile(local) and not os.path.islink(local):
            st = os.lstat(local)
            with open(local, "rb") as f:
                write_atomic(original_copy(host, path), f.read(), 0o600)
            index[path] = {
                "mode": stat.S_IMODE(st.st_mode),
                "owner": name_of_uid(st.st_uid),
                "group": name_of_gid(st.st_gid),
            }
        else:
            index[path] = None
        changed = True
    if changed:
        write_json(host.state_path("originals.json"), index)


def forget_originals(host: Host, managed: Manifest) -> None:
    """Originals of paths no longer managed are dropped: if a path is managed again later,
    what is found there then is its original."""
    index = read_originals(host)
    for path in sorted(set(index) - set(managed)):
        del index[path]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(original_copy(host, path))
    write_json(host.state_path("originals.json"), index)


def prune_releases(host: Host, keep: int, protect: set[str]) -> None:
    base = host.state_path("releases")
    committed = sorted(
        rid for rid in os.listdir(base) if os.path.isfile(os.path.join(base, rid, "release.json"))
    )
    for rid in committed[: max(0, len(committed) - keep)]:
        if rid not in protect:
            shutil.rmtree(os.path.join(base, rid), ignore_errors=True)
    for rid in os.listdir(base):  # failed attempts that never committed
        if rid not in committed and rid not in protect:
            shutil.rmtree(os.path.join(base, rid), ignore_errors=True)


def stored_agents(host: Host) -> set[str]:
    """The agent installs the stored releases name."""
    base = host.state_path("releases")
    found = set()
    for rid in os.listdir(base) if os.path.isdir(base) else []:
        doc = read_json(os.path.join(base, rid, "release.json"))
        if isinstance(doc, dict) and isinstance(doc.get("agent"), str):
            found.add(doc["agent"])
    return found


def mark_current(
    host: Host, release_id: str, managed: Manifest, keep: int, protect: set[str]
) -> None:
    """`release_id` becomes current; what the change owed is done; old releases go."""
    write_atomic(host.state_path("current"), (release_id + "\n").encode(), 0o644)
    clear_pending(host)
    forget_originals(host, managed)
    prune_releases(host, keep, protect | {release_id})
