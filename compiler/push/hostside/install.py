"""Put a stored release's files in place, and put back what was there before.

Every file is renamed into place atomically; derived maps go first (the files that name them
must never point at a missing map), then rendered files, then the deletes, and each directory is
fsynced once. `restore` is the one way back, for a failed apply and a failed rollback alike: the
previous release's files, or for a path it never managed the original found before mailcfg took
it over (or nothing).
"""

from __future__ import annotations

import contextlib
import os

from .fileops import fsync_dir, owner_ids, write_atomic
from .hostroot import Host, StepFailed
from .store import Manifest, Original, original_copy, read_originals, save_originals


def install_file(
    host: Host, host_path: str, source: str, meta: Original, sync_dir: bool = True
) -> None:
    """Copy `source` to `host_path` with `meta`'s mode (and owner, group where real)."""
    with open(source, "rb") as f:
        data = f.read()
    uid = gid = None
    if host.real_owners:
        uid, gid = owner_ids(meta["owner"], meta["group"])
    write_atomic(host.path(host_path), data, meta["mode"], uid, gid, sync_dir)


def remove_file(host: Host, host_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(host.path(host_path))


def install_order(files: Manifest) -> list[str]:
    """Derived maps first (the files that name them must never point at a missing map)."""
    return sorted(files, key=lambda p: (not files[p].get("derived"), p))


def install_tree(host: Host, release_id: str, files: Manifest, old_manifest: Manifest) -> None:
    """Install release `release_id` over the one whose manifest is `old_manifest`."""
    save_originals(host, files, old_manifest)
    for path in install_order(files):
        install_file(host, path, host.tree_path(release_id, path), files[path], sync_dir=False)
    for path in sorted(set(old_manifest) - set(files)):
        remove_file(host, path)
    for directory in sorted(
        {os.path.dirname(host.path(p)) for p in set(files) | set(old_manifest)}
    ):
        if os.path.isdir(directory):
            fsync_dir(directory)


def restore(
    host: Host, old_id: str | None, old_manifest: Manifest, new_files: Manifest
) -> list[str]:
    """Put back release `old_id` over a partly or wholly installed `new_files`; the problems
    met (each path's), so one bad file does not stop the others."""
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
