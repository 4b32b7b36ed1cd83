"""Durable file writes, digests and owner names on the host: the primitives every step uses.

A write goes next to its destination, is fsynced and renamed over it, so a reader sees the old
file or the new one, never a part; staged files are created 0600 and made durable in one pass.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
from typing import Any

from .hostroot import StepFailed


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(
    dest: str,
    data: bytes,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
    sync_dir: bool = True,
) -> None:
    """Write next to `dest`, fsync, set metadata, rename over it: readers see old or new.
    With `sync_dir=False` the caller fsyncs the directory (once for many files)."""
    parent = os.path.dirname(dest)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    tmp = dest + ".mailcfg-new"
    # Created 0600 so sensitive content is never readable by others, even for an instant.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        _write_all(fd, data)
        if uid is not None and gid is not None:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    if sync_dir:
        fsync_dir(parent)


def write_new(dest: str, data: bytes) -> None:
    """Create a staged file (0600, not yet durable: `sync_tree` makes the tree durable)."""
    os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def sync_tree(top: str) -> None:
    """fsync every file and directory under `top` (one pass, not two per file)."""
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def read_json(path: str, default: Any = None) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return default


def write_json(path: str, doc: object) -> None:
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode(), 0o600)


def owner_ids(owner: str, group: str) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise StepFailed("stage", f"unknown user {owner!r} on this host") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise StepFailed("stage", f"unknown group {group!r} on this host") from None
    return uid, gid


def name_of_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def name_of_gid(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
