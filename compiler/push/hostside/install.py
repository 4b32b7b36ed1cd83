"""Put a stored release's files in place, and put back what was there before.

Every file is renamed into place atomically; derived maps go first (the files that name them
must never point at a missing map), then rendered files, then the deletes, and each directory is
fsynced once. A file already as wanted (content, mode and, where real, owner) is not written:
it keeps its inode and mtime, so Postfix does not wait for an untouched `main.cf` to age and
a reader never sees a rename that changed nothing.

`restore` is the one way back, for a failed apply, a failed rollback and `recover` alike: the
previous release's files, or for a path it never managed the original found before mailcfg took
it over (or nothing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Collection

from .fileops import fsync_dir, owner_ids, sha256_file, write_atomic
from .hostroot import Host, StepFailed
from .store import Manifest, Original, original_copy, read_originals, save_originals

# Tests only (never set on a host, not reachable from an inventory): after installing this
# many files the process kills itself, as a crash or a `kill -9` mid-install would.
KILL_AFTER_FILES = "MAILCFG_TEST_KILL_AFTER_FILES"


def install_file(
    host: Host, host_path: str, source: str, meta: Original, sync_dir: bool = True
) -> bool:
    """Copy `source` to `host_path` with `meta`'s mode (and owner, group where real), unless
    the live file already is that; whether it was written."""
    uid = gid = None
    if host.real_owners:
        uid, gid = owner_ids(meta["owner"], meta["group"])
    live = host.path(host_path)
    if is_same_file(live, source, meta["mode"], uid, gid):
        return False
    with open(source, "rb") as f:
        data = f.read()
    write_atomic(live, data, meta["mode"], uid, gid, sync_dir)
    return True


def is_same_file(live: str, source: str, mode: int, uid: int | None, gid: int | None) -> bool:
    """`live` is a regular file with `source`'s content, `mode` and (when given) owner."""
    try:
        st = os.lstat(live)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
        return False
    if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
        return False
    return st.st_size == os.path.getsize(source) and sha256_file(live) == sha256_file(source)


def remove_file(host: Host, host_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(host.path(host_path))


def install_order(files: Manifest) -> list[str]:
    """Derived maps first (the files that name them must never point at a missing map)."""
    return sorted(files, key=lambda p: (not files[p].get("derived"), p))


def install_tree(host: Host, release_id: str, files: Manifest, old_manifest: Manifest) -> None:
    """Install release `release_id` over the one whose manifest is `old_manifest`."""
    save_originals(host, files, old_manifest)
    kill_after = int(os.environ.get(KILL_AFTER_FILES, "0") or 0)
    written = 0
    for path in install_order(files):
        source = host.tree_path(release_id, path)
        written += install_file(host, path, source, files[path], sync_dir=False)
        if kill_after and written >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    for path in sorted(set(old_manifest) - set(files)):
        remove_file(host, path)
    for directory in sorted(
        {os.path.dirname(host.path(p)) for p in set(files) | set(old_manifest)}
    ):
        if os.path.isdir(directory):
            fsync_dir(directory)


def restore(
    host: Host, old_id: str | None, old_manifest: Manifest, new_files: Collection[str]
) -> list[str]:
    """Put back release `old_id` over a partly or wholly installed `new_files` (the paths the
    change may have written); the problems met (each path's), so one bad file does not stop
    the others."""
    errors: list[str] = []
    index = read_originals(host)
    for path in install_order(old_manifest):
        try:
            source = host.tree_path(old_id or "", path)
            install_file(host, path, source, old_manifest[path])
        except (OSError, StepFailed) as exc:
            errors.append(f"{path}: {exc}")
    for path in sorted(set(new_files) - set(old_manifest)):
        try:
            original = index.get(path)
            if original is None:
                remove_file(host, path)
            else:
                install_file(host, path, original_copy(host, path), original)
        except (OSError, StepFailed) as exc:
            errors.append(f"{path}: {exc}")
    return errors
