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

from compiler.types import FileTree, RenderedFile

_TMP_SUFFIX = ".mailcfg-new"
_MANIFEST_FORMAT = "mailcfg-outdir-manifest-1"
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
    # os-level calls: a Python file object costs more than the read for a small file.
    fd = os.open(dest, os.O_RDONLY)
    try:
        return os.read(fd, size + 1) == content
    finally:
        os.close(fd)


def _unchanged(
    dest: str, st: os.stat_result | None, file: RenderedFile, rec: _Record | None
) -> str | None:
    """The sha256 of `file` if `dest` (lstat `st`) holds it already, else None."""
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
    if _same_bytes(dest, st.st_size, file.content):
        return hashlib.sha256(file.content).hexdigest()
    return None


def _remove_others(directory: str, keep: set[str]) -> None:
    """Remove every file under `directory` not in `keep` (like `os.walk`: symlinks to
    directories are left alone, never followed)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir():
                if not entry.is_symlink():
                    _remove_others(entry.path, keep)
            elif entry.path not in keep:
                os.unlink(entry.path)


def write_tree(tree: FileTree, directory: Path, manifest: Path | None = None) -> int:
    """Make `directory` hold exactly the files of `tree`; returns how many files it holds.
    `manifest` (a file outside `directory`, private to this output directory) lets the next
    call skip reading files nobody touched (see the module docstring)."""
    root = os.path.abspath(directory)
    prefix = root.rstrip("/") + "/"
    records = _read_manifest(manifest, root)
    kept: dict[str, _Record] = {}  # left as they were
    keep: set[str] = set()
    parents: set[str] = set()
    for path, file in tree.files.items():
        dest = prefix + path.lstrip("/")
        keep.add(dest)
        try:
            st: os.stat_result | None = os.lstat(dest)
        except FileNotFoundError:
            st = None
        digest = _unchanged(dest, st, file, records.get(dest))
        if digest is not None and st is not None:
            kept[dest] = _Record(_stat_key(st), digest)
            continue
        parent = os.path.dirname(dest)
        if parent not in parents:
            os.makedirs(parent, exist_ok=True)
            parents.add(parent)
        tmp = dest + _TMP_SUFFIX
        with open(tmp, "wb") as f:
            f.write(file.content)
        os.chmod(tmp, file.mode)
        os.replace(tmp, dest)
    if os.path.isdir(root):
        _remove_others(root, keep)
    if manifest is not None and kept != records:
        # Files written now are left out: their ctime is too recent to be trusted next
        # time (racy), so the next run compares their bytes and records them.
        _write_manifest(manifest, root, kept)
    return len(keep)
