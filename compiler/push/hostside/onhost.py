"""The on-host half of mailcfg: a self-contained, stdlib-only Python 3 script run ON the host.

Like an Ansible module, the compiler uploads this file (content-addressed, to
`/var/lib/mailcfg/onhost-<sha256[:12]>.py`) and runs it with `python3 <script> <command> --root R`.
R is "/" on a real host; a local directory root passes its own path and every host path is
prefixed with it. It must never import from `compiler` or `schemas`: the host has none of them.
Input is a JSON document (zlib + base64 in argv, or a file); output is ONE JSON document on
stdout. Commands:

- `observe`: current release, its manifest, and sha256/mode/owner/group of every managed or
  desired path; the content of files that differ from the desired sha (never of sensitive or
  very large files); the activations an interrupted apply still owes. Read-only, no lock.
- `apply --bundle TAR`: the WHOLE release transaction in one process: lock → check the host is
  still at the release the plan was made against → stage (unpack, verify sha256, set metadata)
  → build (`postmap` etc. in staging) → validate → record `pending.json` → install (atomic
  renames, derived maps first, then rendered files, then deletes) → activate (reload) → verify
  → commit (`current` replaced atomically, pending cleared, old releases pruned). A failure
  after install has begun reinstalls the previous release (or, for paths it never managed, the
  original file found before mailcfg took it over) and re-runs the reloads.
- `rollback [--to ID]`: reinstall a stored release the same way and reload its roles.
- `releases`: stored releases with ids, timestamps, tree digests and which one is current.

Why one process for the whole apply: the per-host lock is an `fcntl.flock` on
`/var/lib/mailcfg/lock`, held by that process from the first check to the commit. A kernel lock
cannot go stale: if the process dies the kernel releases it, so there is no pid-liveness guess
and no pid-reuse race, and no token has to be threaded through several invocations (each a
window for another apply). The lock file also records the holder (pid, host name, start time)
so a refused apply names who holds it; a record found under a free lock is the trace of a
crashed holder and is reported as a broken stale lock. One invocation is also the fewest round
trips: an apply is upload bundle + run. A crash mid-install leaves `pending.json`; `observe`
reports it and the next apply re-runs those activations, so a reload is never lost.

Ownership: on "/" files get their owner/group (unknown users fail the stage step, before any
live file is touched). On another root (a local preview directory), ownership is recorded but
not applied unless `--owners real` is given: chowning files in a working directory to
`postfix` would surprise, and a non-root user cannot. On such a root a build/validate/apply/verify
command that is not installed (exit 127) is skipped with a warning instead of failing, since a
preview machine need not have Postfix; on "/" it fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
import zlib
from typing import Any

Json = dict[str, Any]

STATE_DIR = "var/lib/mailcfg"
MAX_DIFF_BYTES = 1 << 20  # larger files are not returned for diffs
COMMAND_TIMEOUT = 300.0
NOT_FOUND = 127  # the shell's "command not found"


class StepFailed(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


# --- paths and small file helpers -------------------------------------------------------------


class Host:
    """The host's layout under `root`."""

    def __init__(self, root: str, owners: str) -> None:
        self.root = os.path.abspath(root)
        self.is_system = self.root == "/"
        self.real_owners = owners == "real" or (owners == "auto" and self.is_system)
        # A directory root has no services of its own: its reload/verify commands would act on
        # this machine's Postfix, Dovecot and systemd. Build and validate still run there.
        services = os.environ.get("MAILCFG_SERVICES", "auto")
        self.run_services = services == "run" or (services == "auto" and self.is_system)
        self.state = os.path.join(self.root, STATE_DIR)
        self.checked: set[str] = set()  # directories known to hold no link on their way

    def path(self, host_path: str) -> str:
        parts = host_path.split("/")
        # Only a normalized absolute path: no "..", ".", "//" (which could leave the root or
        # the staging directory), no NUL.
        if parts[0] != "" or any(p in ("", ".", "..") for p in parts[1:]) or "\0" in host_path:
            raise StepFailed("input", f"not an absolute file path: {host_path!r}")
        local = os.path.join(self.root, host_path[1:])
        if not self.is_system:
            self.check_no_link(os.path.dirname(local))
        return local

    def check_no_link(self, directory: str) -> None:
        """On a directory root, refuse a symbolic link on the way from the root down to
        `directory` (where it exists): the root may lie in a checkout that holds
        `etc -> /etc`, and every read, write and delete must stay below it. On "/" links
        are the system's own."""
        if directory in self.checked:
            return
        parent = os.path.dirname(directory)
        if directory != self.root and parent != directory:
            self.check_no_link(parent)
        if os.path.islink(directory):
            raise StepFailed(
                "input",
                f"{directory} is a symbolic link; a directory root is used only "
                "through real directories below it",
            )
        self.checked.add(directory)

    def check_state(self) -> None:
        """On a directory root, no symbolic link on the way to or anywhere below the state
        directory (releases are pruned and staged there with rmtree and plain paths)."""
        if self.is_system:
            return
        self.check_no_link(self.state)
        for dirpath, dirs, names in os.walk(self.state):
            for name in dirs + names:
                if os.path.islink(os.path.join(dirpath, name)):
                    raise StepFailed(
                        "input",
                        f"{os.path.join(dirpath, name)} is a symbolic link; the "
                        "state directory of a directory root holds none",
                    )

    def release_dir(self, release_id: str) -> str:
        if not release_id or "/" in release_id or release_id.startswith("."):
            raise StepFailed("input", f"bad release id {release_id!r}")
        return os.path.join(self.state, "releases", release_id)

    def tree_path(self, release_id: str, host_path: str) -> str:
        return os.path.join(self.release_dir(release_id), "tree", host_path.lstrip("/"))


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
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
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
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
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


def write_json(path: str, doc: Any) -> None:
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


# --- host state ---------------------------------------------------------------------------------


def current_release(host: Host) -> str | None:
    try:
        with open(os.path.join(host.state, "current"), encoding="utf-8") as f:
            value = f.read().strip()
    except FileNotFoundError:
        return None
    return value or None


def load_release(host: Host, release_id: str) -> Json:
    doc = read_json(os.path.join(host.release_dir(release_id), "release.json"))
    if not isinstance(doc, dict):
        raise StepFailed("input", f"release {release_id} is not stored on this host")
    return doc


def current_manifest(host: Host) -> tuple[str | None, Json]:
    """Files (rendered and derived) installed by the current release."""
    cur = current_release(host)
    return (cur, load_release(host, cur)["files"]) if cur else (None, {})


def observe_path(host: Host, host_path: str, recorded: tuple[str, str] | None) -> Json | None:
    """sha256/mode/owner/group of a live file, or None when absent."""
    local = host.path(host_path)
    try:
        st = os.lstat(local)
    except (FileNotFoundError, NotADirectoryError):
        return None
    digest = sha256_file(local) if stat.S_ISREG(st.st_mode) else "not-a-regular-file"
    owner, group = name_of_uid(st.st_uid), name_of_gid(st.st_gid)
    if not host.real_owners and recorded is not None:
        owner, group = recorded
    return {
        "sha256": digest,
        "mode": stat.S_IMODE(st.st_mode),
        "owner": owner,
        "group": group,
        "size": st.st_size,
    }


def cmd_observe(host: Host, args: Json) -> Json:
    desired = args.get("paths", {})  # path -> [sha256 prefix, owner, group]
    sensitive = set(args.get("sensitive", []))
    cur, manifest = current_manifest(host)
    rendered = {p: m for p, m in manifest.items() if not m.get("derived")}
    files, previous = {}, {}
    for path in sorted(set(desired) | set(rendered)):
        if path in rendered:
            recorded = (rendered[path]["owner"], rendered[path]["group"])
        else:
            recorded = (desired[path][1], desired[path][2])
        live = observe_path(host, path, recorded)
        if live is None:
            continue
        files[path] = live
        want = desired.get(path, [""])[0]
        secret = path in sensitive or rendered.get(path, {}).get("sensitive", False)
        if (
            not live["sha256"].startswith(want or "-")
            and live["sha256"] != "not-a-regular-file"
            and not secret
            and live["size"] <= MAX_DIFF_BYTES
        ):
            with open(host.path(path), "rb") as f:
                previous[path] = base64.b64encode(f.read()).decode()
    pending = read_json(os.path.join(host.state, "pending.json"))
    return {
        "ok": True,
        "release_id": cur,
        "managed": rendered,
        "files": files,
        "previous": previous,
        "interrupted": pending["release"] if pending else None,
        "pending": pending["activations"] if pending else [],
    }


def cmd_releases(host: Host, args: Json) -> Json:
    cur = current_release(host)
    base = os.path.join(host.state, "releases")
    out = []
    for rid in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        doc = read_json(os.path.join(base, rid, "release.json"))
        if doc is None:
            continue  # staged or failed attempt, never committed
        out.append(
            {
                "id": rid,
                "tree_digest": doc.get("tree_digest", ""),
                "previous": doc.get("previous"),
                "installed_at": doc.get("installed_at"),
                "files": len(doc.get("files", {})),
                "current": rid == cur,
            }
        )
    return {"ok": True, "current": cur, "releases": out}


# --- lock ---------------------------------------------------------------------------------------


class HostLock:
    """`fcntl.flock` on the lock file, held for the whole transaction (see module docstring)."""

    def __init__(self, host: Host, warnings: list[str]) -> None:
        self.path = os.path.join(host.state, "lock")
        self.warnings = warnings
        self.fd = -1

    def __enter__(self) -> HostLock:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise StepFailed("lock", f"another apply holds the host lock: {holder}") from None
        old = os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
        if old:
            self.warnings.append(f"broke a stale lock left by a process that is gone: {old}")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": int(time.time())}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(me, sort_keys=True).encode(), 0)
        os.fsync(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# --- commands run on the host ------------------------------------------------------------------


def run_commands(
    host: Host, step: str, commands: list[str], stage: str | None, warnings: list[str]
) -> None:
    env = dict(os.environ, MAILCFG_ROOT=host.root)
    if stage:
        env["MAILCFG_STAGE"] = stage
    for template in commands:
        command = template.replace("{stage}", stage or "")
        try:
            proc = subprocess.run(
                command,
                shell=True,
                cwd=host.root,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(step, f"{command}: timed out after {COMMAND_TIMEOUT:.0f}s") from None
        output = (proc.stderr + proc.stdout).decode(errors="replace").strip()
        if proc.returncode == NOT_FOUND and not host.is_system:
            warnings.append(f"{step} skipped on a local root (not installed): {output}")
            continue
        if proc.returncode != 0:
            detail = output or "(no output)"
            raise StepFailed(step, f"{command}: exit {proc.returncode}: {detail}")


def merge_activations(first: list[Json], second: list[Json]) -> list[Json]:
    """Union by role, `first` wins."""
    seen = {a["role"] for a in first}
    return list(first) + [a for a in second if a["role"] not in seen]


# --- install ------------------------------------------------------------------------------------


def install_file(
    host: Host, host_path: str, source: str, meta: Json, sync_dir: bool = True
) -> None:
    with open(source, "rb") as f:
        data = f.read()
    uid = gid = None
    if host.real_owners:
        uid, gid = owner_ids(meta["owner"], meta["group"])
    write_atomic(host.path(host_path), data, meta["mode"], uid, gid, sync_dir)


def remove_file(host: Host, host_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(host.path(host_path))


def install_order(files: Json) -> list[str]:
    """Derived maps first (the files that name them must never point at a missing map)."""
    return sorted(files, key=lambda p: (not files[p].get("derived"), p))


def save_originals(host: Host, paths: Json, old_manifest: Json) -> None:
    """Keep the file found at a path before mailcfg first manages it, for rollback."""
    index_path = os.path.join(host.state, "originals.json")
    index = read_json(index_path, {})
    changed = False
    for path in paths:
        if path in old_manifest or path in index:
            continue
        local = host.path(path)
        if os.path.isfile(local) and not os.path.islink(local):
            st = os.lstat(local)
            copy = os.path.join(host.state, "originals", path.lstrip("/"))
            with open(local, "rb") as f:
                write_atomic(copy, f.read(), 0o600)
            index[path] = {
                "mode": stat.S_IMODE(st.st_mode),
                "owner": name_of_uid(st.st_uid),
                "group": name_of_gid(st.st_gid),
            }
        else:
            index[path] = None
        changed = True
    if changed:
        write_json(index_path, index)


def install_tree(host: Host, release_id: str, files: Json, old_manifest: Json) -> None:
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


def restore(host: Host, old_id: str | None, old_manifest: Json, new_files: Json) -> list[str]:
    """Put back what was there before: the previous release, or the pre-mailcfg original."""
    errors: list[str] = []
    index = read_json(os.path.join(host.state, "originals.json"), {})
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
                copy = os.path.join(host.state, "originals", path.lstrip("/"))
                install_file(host, path, copy, original)
        except (OSError, StepFailed) as exc:
            errors.append(f"{path}: {exc}")
    return errors


# --- apply --------------------------------------------------------------------------------------


def unpack_bundle(host: Host, bundle: str, stage_dir: str) -> Json:
    """The bundle: `release.json` plus `tree/<path>` members. Returns the release document."""
    doc = None
    with tarfile.open(bundle, "r") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle else b""
            if member.name == "release.json":
                doc = json.loads(data)
                continue
            if not member.name.startswith("tree/"):
                raise StepFailed("stage", f"unexpected bundle member {member.name!r}")
            host_path = "/" + member.name[len("tree/") :]
            host.path(host_path)  # rejects "..", relative paths
            write_new(os.path.join(stage_dir, host_path.lstrip("/")), data)
    if not isinstance(doc, dict):
        raise StepFailed("stage", "bundle has no release.json")
    return doc


def stage_release(host: Host, doc: Json, stage_dir: str) -> None:
    """Verify what arrived and give each staged file its final metadata."""
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


def list_tree(stage_dir: str) -> set[str]:
    found = set()
    for dirpath, _dirs, names in os.walk(stage_dir):
        for name in names:
            found.add("/" + os.path.relpath(os.path.join(dirpath, name), stage_dir))
    return found


def derived_meta(host: Host, path: str, stage_dir: str, files: Json, role: str) -> Json:
    """A derived map takes the metadata of its source (`x.db` ← `x`) when there is one."""
    local = os.path.join(stage_dir, path.lstrip("/"))
    source = files.get(os.path.splitext(path)[0])
    st = os.lstat(local)
    meta: Json = {
        "sha256": sha256_file(local),
        "mode": source["mode"] if source else stat.S_IMODE(st.st_mode),
        "owner": source["owner"] if source else name_of_uid(st.st_uid),
        "group": source["group"] if source else name_of_gid(st.st_gid),
        "role": role,
        "sensitive": bool(source and source.get("sensitive")),
        "derived": True,
    }
    os.chmod(local, int(meta["mode"]))
    if host.real_owners:
        os.chown(local, *owner_ids(str(meta["owner"]), str(meta["group"])))
    return meta


def build_release(
    host: Host,
    doc: Json,
    stage_dir: str,
    old_id: str | None,
    old_manifest: Json,
    warnings: list[str],
) -> Json:
    """Run each role's build in staging; carry over derived maps of roles not rebuilt."""
    files = dict(doc["files"])
    rebuilt = {a["role"] for a in doc["activations"] if a.get("build")}
    for path, meta in old_manifest.items():
        if old_id and meta.get("derived") and meta.get("role") not in rebuilt and path not in files:
            source = host.tree_path(old_id, path)
            dest = os.path.join(stage_dir, path.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(source, dest)
            files[path] = dict(meta)
    for activation in doc["activations"]:
        if not activation.get("build"):
            continue
        before = list_tree(stage_dir)
        run_commands(host, "build", activation["build"], stage_dir, warnings)
        for path in sorted(list_tree(stage_dir) - before):
            files[path] = derived_meta(host, path, stage_dir, files, activation["role"])
    return files


def prune_releases(host: Host, keep: int, protect: set[str]) -> None:
    base = os.path.join(host.state, "releases")
    committed = sorted(
        rid for rid in os.listdir(base) if os.path.isfile(os.path.join(base, rid, "release.json"))
    )
    for rid in committed[: max(0, len(committed) - keep)]:
        if rid not in protect:
            shutil.rmtree(os.path.join(base, rid), ignore_errors=True)
    for rid in os.listdir(base):  # failed attempts that never committed
        if rid not in committed and rid not in protect:
            shutil.rmtree(os.path.join(base, rid), ignore_errors=True)


def forget_originals(host: Host, managed: Json) -> None:
    """Originals of paths no longer managed are dropped: if a path is managed again later,
    what is found there then is its original."""
    index_path = os.path.join(host.state, "originals.json")
    index = read_json(index_path, {})
    for path in sorted(set(index) - set(managed)):
        del index[path]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(host.state, "originals", path.lstrip("/")))
    write_json(index_path, index)


def commit(host: Host, release_id: str, managed: Json, keep: int, protect: set[str]) -> None:
    write_atomic(os.path.join(host.state, "current"), (release_id + "\n").encode(), 0o644)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(host.state, "pending.json"))
    forget_originals(host, managed)
    prune_releases(host, keep, protect | {release_id})


def services_skipped(host: Host, activations: list[Json], warnings: list[str]) -> bool:
    if host.run_services or not activations:
        return False
    names = ", ".join(sorted({str(a.get("service", "?")) for a in activations}))
    warnings.append(
        f"reload/verify of {names} skipped: a local root runs no services "
        "(MAILCFG_SERVICES=run forces them)"
    )
    return True


def activate(host: Host, activations: list[Json], warnings: list[str]) -> None:
    if services_skipped(host, activations, warnings):
        return
    for activation in activations:
        run_commands(host, "activate", activation.get("apply", []), None, warnings)
    for activation in activations:
        run_commands(host, "verify", activation.get("verify", []), None, warnings)


def cmd_apply(host: Host, args: Json) -> Json:
    warnings: list[str] = []
    bundle = host.path(args["bundle"])
    with HostLock(host, warnings):
        try:
            return transact(host, bundle, warnings)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(bundle)


def transact(host: Host, bundle: str, warnings: list[str]) -> Json:
    staging = os.path.join(host.state, "staging")
    os.makedirs(staging, mode=0o700, exist_ok=True)
    os.chmod(host.state, 0o700)  # release trees hold sensitive copies
    tmp_stage = os.path.join(staging, f"tree-{os.getpid()}")
    shutil.rmtree(tmp_stage, ignore_errors=True)
    doc = unpack_bundle(host, bundle, tmp_stage)
    release_id = doc["id"]
    old_id, old_manifest = current_manifest(host)
    if old_id != doc.get("expect_current"):
        shutil.rmtree(tmp_stage, ignore_errors=True)
        raise StepFailed(
            "check",
            f"host is at release {old_id} but the plan was made against "
            f"{doc.get('expect_current')}: plan again",
        )
    if os.path.isfile(os.path.join(host.release_dir(release_id), "release.json")):
        shutil.rmtree(tmp_stage, ignore_errors=True)
        raise StepFailed("check", f"release {release_id} already exists on this host")
    rdir = host.release_dir(release_id)
    shutil.rmtree(rdir, ignore_errors=True)
    os.makedirs(rdir, mode=0o700)
    stage_dir = os.path.join(rdir, "tree")
    os.replace(tmp_stage, stage_dir)
    old_pending = read_json(os.path.join(host.state, "pending.json"))
    activations = merge_activations(
        doc["activations"], old_pending["activations"] if old_pending else []
    )
    try:
        stage_release(host, doc, stage_dir)
        files = build_release(host, doc, stage_dir, old_id, old_manifest, warnings)
        for activation in doc["activations"]:
            run_commands(host, "validate", activation.get("validate", []), stage_dir, warnings)
        sync_tree(stage_dir)  # the release store must survive a crash: rollback reads it
    except BaseException:
        shutil.rmtree(rdir, ignore_errors=True)  # live files untouched: nothing to undo
        raise
    pending = {
        "release": release_id,
        "previous": old_id,
        "activations": activations,
        "started": int(time.time()),
    }
    write_json(os.path.join(host.state, "pending.json"), pending)
    step = "install"
    try:
        install_tree(host, release_id, files, old_manifest)
        step = "activate"
        activate(host, activations, warnings)
    except (OSError, StepFailed) as exc:
        failed = exc if isinstance(exc, StepFailed) else StepFailed(step, str(exc))
        errors = restore(host, old_id, old_manifest, files)
        try:
            run_reloads(host, activations, warnings)
        except StepFailed as again:
            errors.append(f"reload after rollback: {again.message}")
        if not errors:
            os.unlink(os.path.join(host.state, "pending.json"))
        shutil.rmtree(rdir, ignore_errors=True)
        return {
            "ok": False,
            "step": failed.step,
            "message": failed.message,
            "rolled_back_to": old_id,
            "rollback_errors": errors,
            "warnings": warnings,
        }
    record = dict(doc, files=files, activations=activations, previous=old_id)
    record["installed_at"] = int(time.time())
    record.pop("expect_current", None)
    write_json(os.path.join(rdir, "release.json"), record)
    keep = int(doc.get("keep_releases", 5))
    commit(host, release_id, files, keep, {old_id} if old_id else set())
    return {"ok": True, "release_id": release_id, "previous": old_id, "warnings": warnings}


def run_reloads(host: Host, activations: list[Json], warnings: list[str]) -> None:
    if services_skipped(host, activations, warnings):
        return
    for activation in activations:
        run_commands(host, "activate", activation.get("apply", []), None, warnings)


def cmd_rollback(host: Host, args: Json) -> Json:
    warnings: list[str] = []
    with HostLock(host, warnings):
        cur, manifest = current_manifest(host)
        target = args.get("to")
        if not target:
            if cur is None:
                raise StepFailed("rollback", "no current release to roll back from")
            target = load_release(host, cur).get("previous")
            if not target:
                raise StepFailed("rollback", f"release {cur} has no previous release")
        doc = load_release(host, target)
        files = doc["files"]
        roles = {
            meta.get("role")
            for path, meta in list(files.items()) + list(manifest.items())
            if files.get(path, {}).get("sha256") != manifest.get(path, {}).get("sha256")
            or files.get(path, {}).get("mode") != manifest.get(path, {}).get("mode")
        }
        activations = [a for a in args.get("activations", []) if a["role"] in roles]
        write_json(
            os.path.join(host.state, "pending.json"),
            {
                "release": target,
                "previous": cur,
                "activations": activations,
                "started": int(time.time()),
            },
        )
        try:
            install_tree(host, target, files, manifest)
            activate(host, activations, warnings)
        except OSError as exc:
            raise StepFailed("install", str(exc)) from None
        commit(host, target, files, 1 << 30, set())
        return {"ok": True, "release_id": target, "previous": cur, "warnings": warnings}


# --- entry point --------------------------------------------------------------------------------

COMMANDS = {
    "observe": cmd_observe,
    "apply": cmd_apply,
    "rollback": cmd_rollback,
    "releases": cmd_releases,
}


def decode_args(ns: argparse.Namespace, host: Host) -> Json:
    doc: Any = {}
    if ns.args_b64:
        doc = json.loads(zlib.decompress(base64.b64decode(ns.args_b64)))
    elif ns.args_file:
        path = host.path(ns.args_file)
        doc = read_json(path, {})
        os.unlink(path)
    if not isinstance(doc, dict):
        raise StepFailed("input", "arguments are not a JSON object")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailcfg-onhost")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--root", default="/")
    parser.add_argument("--owners", choices=["auto", "real", "recorded"], default="auto")
    parser.add_argument("--args-b64", default="")
    parser.add_argument("--args-file", default="")
    ns = parser.parse_args(argv)
    host = Host(ns.root, ns.owners)
    try:
        host.check_state()
        result = COMMANDS[ns.command](host, decode_args(ns, host))
    except StepFailed as exc:
        result = {"ok": False, "step": exc.step, "message": exc.message, "warnings": []}
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError, zlib.error) as exc:
        result = {
            "ok": False,
            "step": ns.command,
            "message": f"{type(exc).__name__}: {exc}",
            "warnings": [],
        }
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")  # ASCII: safe in any locale
    sys.stdout.flush()
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
