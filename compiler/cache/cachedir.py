"""Where the compiler's caches live, whether a directory is safe to keep them in, and the
per-user key that authenticates their files.

A checkout is untrusted (CI runs `mailcfg plan` on every pull request), so caches live outside
it: `$XDG_CACHE_HOME/mailcfg/` (default `~/.cache/mailcfg/`), one subdirectory per inventory,
named by a digest of the inventory directory's resolved path. `mailcfg --cache DIR` chooses
another directory.

A cache directory is used only if it is a real directory (not a symlink) owned by the current
user and not writable by group or others; the directories mailcfg makes for it (and missing
parents) are made 0700 and checked the same way. A too-loose directory of mailcfg's own
default tree is tightened to 0700 when it is ours; any other unsafe directory is refused
(`CacheError`), and the caller runs without a cache.

The key: 32 random bytes in `$XDG_CACHE_HOME/mailcfg/key`, made once (0600, exclusively, never
through a symlink) and used only while it is a regular file of ours that nobody else can read.
`compiler.cache.packstore` tags every file it writes with an HMAC under it, so a file nobody
with the key wrote, such as one committed into a checkout that `--cache` points at, is never
unpickled.
The key is read from that one place whatever `--cache` says: a cache directory never holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

KEY_NAME = "key"
_KEY_SIZE = 32
_PRIVATE = 0o700


class CacheError(Exception):
    """A cache directory or key that must not be used (the message says why)."""


def find_cache_root() -> Path:
    """`$XDG_CACHE_HOME/mailcfg` (a relative XDG_CACHE_HOME is ignored, as the XDG spec says),
    else `~/.cache/mailcfg`."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(base):
        return Path(base) / "mailcfg"
    try:
        return Path.home() / ".cache" / "mailcfg"
    except RuntimeError as exc:  # no HOME and no passwd entry
        raise CacheError(f"no cache directory: {exc}") from exc


def default_cache_dir(inventory: Path) -> Path:
    """The cache directory of the inventory in directory `inventory`."""
    name = hashlib.sha256(os.fsencode(inventory.resolve())).hexdigest()[:32]
    return find_cache_root() / name


def open_cache_dir(directory: Path | None, inventory: Path) -> Path:
    """The cache directory to use for `inventory`: `directory`, or the default one when None;
    made and checked (see the module docstring), and the key made ready. Raises `CacheError`
    when it must not be used."""
    if directory is None:
        prepare_cache_dir(find_cache_root(), tighten=True)
        directory = default_cache_dir(inventory)
        prepare_cache_dir(directory, tighten=True)
    else:
        prepare_cache_dir(directory, tighten=False)
    read_cache_key()
    return directory


def prepare_cache_dir(directory: Path, *, tighten: bool) -> None:
    """Make `directory` and its missing parents (0700), then check each of those and
    `directory` itself: a directory, not a symlink, owned by us, not writable by group or
    others. `tighten`: set a too-loose `directory` of ours to 0700 instead of refusing it
    (parents made here are always tightened). Raises `CacheError`."""
    path = Path(os.path.abspath(directory))
    missing = []
    parent = path
    while not os.path.lexists(parent) and parent.parent != parent:
        missing.append(parent)
        parent = parent.parent
    try:
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
                os.mkdir(new, _PRIVATE)
    except OSError as exc:
        raise CacheError(f"cannot make cache directory {path}: {exc.strerror}") from exc
    for new in reversed(missing):
        _check_directory(new, tighten=True)
    if path not in missing:
        _check_directory(path, tighten=tighten)


def _check_directory(path: Path, *, tighten: bool) -> None:
    try:
        # O_NOFOLLOW: the directory itself must not be a symlink (its parents may be).
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise CacheError(f"cache directory {path}: not a directory ({exc.strerror})") from exc
    try:
        st = os.fstat(fd)
        uid = os.geteuid()
        if st.st_uid != uid:
            raise CacheError(f"cache directory {path} is owned by uid {st.st_uid}, not {uid}")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022:
            if not tighten:
                raise CacheError(
                    f"cache directory {path} is writable by group or others (mode {mode:04o})"
                )
            os.fchmod(fd, _PRIVATE)  # checked through the same descriptor: no swap between
    except OSError as exc:
        raise CacheError(f"cache directory {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def read_cache_key() -> bytes:
    """The per-user cache key, made when missing; a key file that is not a private regular
    file of ours with exactly a key in it is replaced (entries tagged with it become misses).
    Raises `CacheError` when the cache root is unsafe."""
    root = find_cache_root()
    prepare_cache_dir(root, tighten=True)
    path = root / KEY_NAME
    try:
        key = _read_key(path)
        return key if key is not None else _make_key(path, replace=True)
    except FileNotFoundError:
        return _make_key(path, replace=False)
    except OSError as exc:
        raise CacheError(f"cache key {path}: {exc.strerror}") from exc


def _read_key(path: Path) -> bytes | None:
    """The key in `path`, or None if the file must not be trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError:  # a symlink (ELOOP), or unreadable
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        trusted = (
            stat.S_ISREG(st.st_mode)
            and st.st_uid == os.geteuid()
            and not st.st_mode & 0o077
            and st.st_size == _KEY_SIZE
        )
        key = f.read(_KEY_SIZE + 1) if trusted else b""
    return key if len(key) == _KEY_SIZE else None


def _make_key(path: Path, *, replace: bool) -> bytes:
    """A new key in `path`: written whole to a new private file (mkstemp: O_EXCL, O_NOFOLLOW,
    0600), then put in place. Unless `replace`, a key another process put there first wins."""
    key = secrets.token_bytes(_KEY_SIZE)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key)
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # fails if it exists, unlike a rename
                except FileExistsError:
                    theirs = _read_key(path)
                    if theirs is None:
                        raise CacheError(f"cache key {path}: not a private file") from None
                    return theirs
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:
        raise CacheError(f"cache key {path}: {exc.strerror}") from exc
    return key
