"""Stage a release from an apply's bundle and build its derived maps, beside the live files.

The bundle is a tar of `release.json` (a `wire.BundleDoc`, checked on arrival), `tree/<path>`
members and, when the release brings an agent the host lacks, `agent/<wheel>` members.
Staging verifies each file's sha256 and gives it its final mode (and
owner where real: an unknown user fails here, before any live file is touched); building runs
each changed role's build commands (`postmap` …) in the staged tree and records what they made.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import time
from typing import BinaryIO, cast

from .fileops import name_of_gid, name_of_uid, owner_ids, sha256_file, write_new
from .hostroot import Host, StepFailed
from .runner import run_commands
from .store import Manifest
from .wire import WHEEL_NAME, BundleDoc, FileMeta
from .wirecheck import WireError, check_document


def unpack_bundle(host: Host, bundle: BinaryIO, stage_dir: str, wheel_dir: str) -> BundleDoc:
    """Unpack `bundle`'s tree into `stage_dir` and its wheels into `wheel_dir`; its checked
    `release.json`."""
    try:
        doc = _unpack_members(host, bundle, stage_dir, wheel_dir)
    except tarfile.TarError as exc:
        problem = f"the bundle is not a readable tar: {type(exc).__name__}: {exc}"
        raise StepFailed("stage", problem) from None
    except ValueError as exc:
        raise StepFailed("input", f"the bundle's release.json is not JSON: {exc}") from None
    if doc is None:
        raise StepFailed("stage", "bundle has no release.json")
    try:
        check_document(doc, BundleDoc, "the bundle's release.json")
    except WireError as exc:
        raise StepFailed("input", str(exc)) from None
    return cast(BundleDoc, doc)


def _unpack_members(host: Host, bundle: BinaryIO, stage_dir: str, wheel_dir: str) -> object:
    doc = None
    with tarfile.open(fileobj=bundle, mode="r") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle else b""
            if member.name == "release.json":
                doc = json.loads(data)
                continue
            wheel = member.name[len("agent/") :]
            if member.name.startswith("agent/") and WHEEL_NAME.fullmatch(wheel):
                write_new(os.path.join(wheel_dir, wheel), data)
                continue
            if not member.name.startswith("tree/"):
                raise StepFailed("stage", f"unexpected bundle member {member.name!r}")
            host_path = "/" + member.name[len("tree/") :]
            host.path(host_path)  # rejects "..", relative paths
            write_new(os.path.join(stage_dir, host_path.lstrip("/")), data)
    return doc


# How far back a staged file's mtime is set. Postfix reads a file modified within the last
# second again after a sleep (it cannot tell a complete file from one being written), so every
# postconf/postmap/postfix check on a freshly written main.cf waited ~1.8 s; a staged file is
# complete once its sha256 is checked.
STAGED_AGE = 10


def stage_release(host: Host, doc: BundleDoc, stage_dir: str) -> None:
    """Verify what arrived and give each staged file its final metadata (and an mtime in the
    past, see `STAGED_AGE`)."""
    past = time.time() - STAGED_AGE
    for path, meta in doc["files"].items():
        local = os.path.join(stage_dir, path.lstrip("/"))
        if not os.path.isfile(local):
            raise StepFailed("stage", f"{path} missing from the bundle")
        if sha256_file(local) != meta["sha256"]:
            raise StepFailed("stage", f"{path} arrived corrupted (sha256 mismatch)")
        if host.real_owners:
            uid, gid = owner_ids(meta["owner"], meta["group"])
            os.chown(local, uid, gid)
        os.chmod(local, meta["mode"])
        os.utime(local, (past, past))


def list_tree(stage_dir: str) -> set[str]:
    found = set()
    for dirpath, _dirs, names in os.walk(stage_dir):
        for name in names:
            found.add("/" + os.path.relpath(os.path.join(dirpath, name), stage_dir))
    return found


def derived_meta(host: Host, path: str, stage_dir: str, files: Manifest, role: str) -> FileMeta:
    """A derived map takes the metadata of its source (`x.db` ← `x`) when there is one."""
    local = os.path.join(stage_dir, path.lstrip("/"))
    source = files.get(os.path.splitext(path)[0])
    st = os.lstat(local)
    meta: FileMeta = {
        "sha256": sha256_file(local),
        "mode": source["mode"] if source else stat.S_IMODE(st.st_mode),
        "owner": source["owner"] if source else name_of_uid(st.st_uid),
        "group": source["group"] if source else name_of_gid(st.st_gid),
        "role": role,
        "sensitive": bool(source and source.get("sensitive")),
        "derived": True,
    }
    os.chmod(local, meta["mode"])
    if host.real_owners:
        os.chown(local, *owner_ids(meta["owner"], meta["group"]))
    return meta


def build_release(
    host: Host,
    doc: BundleDoc,
    stage_dir: str,
    old_id: str | None,
    old_manifest: Manifest,
    warnings: list[str],
) -> Manifest:
    """Run each role's build in staging; carry over derived maps of roles not rebuilt. The
    release's whole manifest: rendered and derived files."""
    files: Manifest = dict(doc["files"])
    rebuilt = {a["role"] for a in doc["activations"] if a["build"]}
    for path, meta in old_manifest.items():
        if old_id and meta.get("derived") and meta.get("role") not in rebuilt and path not in files:
            source = host.tree_path(old_id, path)
            dest = os.path.join(stage_dir, path.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(source, dest)
            files[path] = meta
    for activation in doc["activations"]:
        if not activation["build"]:
            continue
        before = list_tree(stage_dir)
        run_commands(host, "build", activation["build"], stage_dir, warnings)
        for path in sorted(list_tree(stage_dir) - before):
            files[path] = derived_meta(host, path, stage_dir, files, activation["role"])
    return files
