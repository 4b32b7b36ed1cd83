"""Write rendered trees to a local directory (`mailcfg render --out DIR`): DIR/<host>/<path>.

Only files whose bytes or mode differ are written (each through a temporary file and an atomic
rename), so rendering a large inventory again after a small edit rewrites a few files instead
of thousands. Files the tree no longer has are removed: the directory is the host's render
output, and a stale file would mislead.

Telling an unchanged file from a changed one without reading it: an optional manifest (kept
outside the output directory, in the render cache) records what the last run left in each file:
its stat identity (size, mtime, ctime, inode, mode) and the sha256 of its bytes. A
file whose stat still matches its record holds those bytes, so comparing digests suffices; any
write to the file (by hand too) changes its ctime, which nobody can set back. A record is
trusted only if the file's ctime was at least `_RACY_NS` older than the manifest when it was
saved (git's "racy clean" rule: a change within the same timestamp tick would not show).
Anything else (no manifest, no record, a mismatch) falls back to reading and comparing bytes.
The manifest only ever answers "is this file of the tree unchanged": its entries name no file
to remove or write, so a damaged or tampered one costs a re-read, nothing more.

Confinement: the host key and every tree path are plain names below the output directory, and
symbolic links inside it are refused, never followed (`compiler.connectors.confine`), so
neither a hostile inventory (`hosts: {"..": ...}`, a path with `..`) nor a checkout that holds
`out/mx1 -> /etc` makes this module write or remove anything outside the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from compiler.connectors.confine import ConfinedDir, plain_name, split_below
from compiler.types import FileTree, RenderedFile

_MANIFEST_FORMAT = "mailcfg-outdir-manifest-2"  # records keyed by path below the root
_RACY_NS = 2_000_000_000  # coarse file timestamps tick every few ms; 2 s is ample

# size, mtime_ns, ctime_ns, inode, st_mode
StatKey = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class _Record:
    stat: StatKey
    sha256: str


def manifest_path(cache_dir: Path, directory: Path) -> Path:
    """Where the manifest of output directory `directory` lives under a cache directory."""
    name = hashlib.sha256(os.fsencode(os.path.abspath(directory))).hexdigest()[:32]
    return cache_dir / "outdir" / f"{name}.json"


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


def _read_manifest(path: Path | None, root: str) -> dict[str, _Record]:
    """The trusted records of `path` for output directory `root` ({} when there are none)."""
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != _MANIFEST_FORMAT or doc.get("root") != root:
            return {}
        trusted_before = int(doc["saved_ns"]) - _RACY_NS
        records = {}
        for dest, (size, mtime, ctime, ino, mode, sha) in doc["files"].items():
            if ctime < trusted_before:
                records[dest] = _Record((size, mtime, ctime, ino, mode), sha)
        return records
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # missing or damaged: every file is compared by its bytes


def _write_manifest(path: Path, root: str, records: dict[str, _Record]) -> None:
    doc = {
        "format": _MANIFEST_FORMAT,
        "root": root,
        "saved_ns": time.time_ns(),
        "files": {dest: [*r.stat, r.sha256] for dest, r in records.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(doc, separators=(",", ":")).encode())  # dumps: the C encoder
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _same_bytes(dest: str, size: int, content: bytes) -> bool:
    # os-level calls: a Python file object costs more than the read for a small file. The
    # directories above `dest` were just opened without following links (`ConfinedDir.lstat`)
    # and the file itself is not followed either: this read stays below the root too.
    fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.read(fd, size + 1) == content
    finally:
        os.close(fd)


def _unchanged(
    root: str,
    parts: tuple[str, ...],
    st: os.stat_result | None,
    file: RenderedFile,
    rec: _Record | None,
) -> str | None:
    """The sha256 of `file` if `root/parts` (lstat `st`) holds it already, else None."""
    if (
        st is None
        or not stat.S_ISREG(st.st_mode)
        or stat.S_IMODE(st.st_mode) != file.mode
        or st.st_size != len(file.content)
    ):
        return None
    if rec is not None and rec.stat == _stat_key(st):
        digest = hashlib.sha256(file.content).hexdigest()
        return digest if digest == rec.sha256 else None
    if _same_bytes(os.path.join(root, *parts), st.st_size, file.content):
        return hashlib.sha256(file.content).hexdigest()
    return None


def write_tree(
    tree: FileTree, directory: Path, manifest: Path | None = None, *, name: str | None = None
) -> int:
    """Make `directory` (or `directory/name`, for one host's files) hold exactly the files of
    `tree`; returns how many files it holds. Nothing is written or removed outside it: `name`
    (a host key from the inventory) must be one plain name, tree paths are plain paths below
    it, and symbolic links inside are refused, never followed (`compiler.connectors.confine`).
    `manifest` (a file outside `directory`, private to this output directory) lets the next
    call skip reading files nobody touched (see the module docstring)."""
    base = (plain_name(name),) if name is not None else ()
    root = os.path.join(os.path.abspath(directory), *base)
    # Every path is checked before anything is written: a bad one leaves the tree untouched.
    # With each path's parts, its record key: the parts joined by "/" (what split_below took).
    files = [
        (base + split_below(path), path.removeprefix("/"), file)
        for path, file in tree.files.items()
    ]
    records = _read_manifest(manifest, root)
    kept: dict[str, _Record] = {}  # left as they were
    keep: set[tuple[str, ...]] = set()
    with ConfinedDir(directory) as out:
        out.directory(base, create=True)
        for parts, key, file in files:
            keep.add(parts)
            st = out.lstat(parts)
            digest = _unchanged(out.root, parts, st, file, records.get(key))
            if digest is not None and st is not None:
                kept[key] = _Record(_stat_key(st), digest)
                continue
            out.write(parts, file.content, file.mode)
        # Whatever else is there is stale (a link is removed as a link, never followed).
        for parts in list(out.walk_files(base)):
            if parts not in keep:
                out.unlink(parts)
    if manifest is not None and _manifest_outdated(records, kept):
        # Files written now are left out: their ctime is too recent to be trusted next
        # time (racy), so the next run compares their bytes and records them.
        _write_manifest(manifest, root, kept)
    return len(keep)


def _manifest_outdated(records: dict[str, _Record], kept: dict[str, _Record]) -> bool:
    """Whether the manifest must be written again: it lacks a record of `kept`, or holds
    many of files not kept. A record of a file written since (or removed) may stay: its stat
    can no longer match (a write changes the ctime), so it only costs a comparison of bytes."""
    if any(records.get(dest) != record for dest, record in kept.items()):
        return True
    return len(records) - len(kept) > max(64, len(kept) // 8)
