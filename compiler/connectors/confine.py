"""Keep writes, reads and deletes below one directory (`render --out DIR`, a local host root).

Every path handled here is split into plain names below a root (`split_below`: "..", ".",
empty names and NUL are refused, so a host key or rendered path cannot name anything outside),
and every directory on the way is opened relative to its parent's descriptor with
`O_NOFOLLOW`: a symbolic link already inside the root (a checkout may hold `out/mx1 -> /etc`)
is an error, never a way out. The root itself is opened without following a final symbolic
link either; only the directories above it, which whoever runs mailcfg named, are trusted.

Also which directories can never be a local host root (`local_root_problem`): `/` and the
system directories, where a host's `/etc/...` would land on this machine's own files.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from types import TracebackType

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_SUFFIX = ".mailcfg-new"

# Exactly these (the root itself and these, not their subdirectories) are refused as a local
# root: writing a host's tree there would touch this machine's own configuration, programs,
# users' homes or kernel interfaces. `/lib*` covers lib32, lib64, libx32.
SYSTEM_DIRECTORIES = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lost+found",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/snap",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/usr/bin",
        "/usr/include",
        "/usr/lib",
        "/usr/lib32",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/local",
        "/usr/sbin",
        "/usr/share",
        "/usr/src",
        "/var/backups",
        "/var/cache",
        "/var/lib",
        "/var/local",
        "/var/lock",
        "/var/log",
        "/var/mail",
        "/var/opt",
        "/var/run",
        "/var/spool",
        "/var/tmp",
        "/var/www",
    }
)
_LIB_DIRECTORY = re.compile(r"/(usr/)?lib[^/]*")


class ConfinementError(ValueError):
    """A path would leave its root (a traversal or a symbolic link on the way)."""


def split_below(path: str) -> tuple[str, ...]:
    """The names of `path` taken below a root: a host path ("/etc/postfix/main.cf") or a
    relative one ("mx1"). Refuses "..", ".", empty names ("a//b"), NUL and an empty path:
    each of them could name something other than the one file below the root it seems to."""
    parts = path[1:].split("/") if path.startswith("/") else path.split("/")
    if not path or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise ConfinementError(f"{path!r} is not a plain path below the root (no '..', '.', '//')")
    return tuple(parts)


def plain_name(name: str) -> str:
    """`name` if it names one entry of a directory (a host's directory below --out)."""
    if len(split_below(name)) != 1 or name.startswith("/"):
        raise ConfinementError(f"{name!r} is not a plain directory name")
    return name


def normalize_root(value: str) -> str:
    """`value` as a normalized path ("//" and "/./" become "/", "/usr/" becomes "/usr")."""
    norm = posixpath.normpath(value)
    return "/" + norm.lstrip("/") if norm.startswith("/") else norm


def local_root_problem(value: str) -> str | None:
    """Why `value` (a local transport's root, as written or resolved) cannot be one, or None.
    An absolute root must not be a system directory; a relative one must name a directory
    below the inventory directory (it is resolved there: "..", "." and "../x" are refused)."""
    if "\0" in value or not value:
        return "a local root must be a directory path"
    norm = normalize_root(value)
    if norm.startswith("/"):
        if norm in SYSTEM_DIRECTORIES or _LIB_DIRECTORY.fullmatch(norm):
            what = "the root directory" if norm == "/" else "a system directory"
            return (
                f"{value!r} is {what}: a local root "
                "stands for a host's '/', so the host's files would overwrite this machine's; "
                "use a directory of its own (e.g. /srv/mailcfg-demo/mx1)"
            )
        return None
    if norm == "." or norm == ".." or norm.startswith("../"):
        return (
            f"{value!r} leaves the inventory directory: a relative local root must name a "
            "directory below it (e.g. hosts/mx1)"
        )
    return None


def _describe(root: str, parts: tuple[str, ...]) -> str:
    return posixpath.join(root, *parts)


class ConfinedDir:
    """An open directory that every operation stays below (see the module docstring).

    Directory descriptors opened on the way are kept until `close` (or the end of a `with`
    block): a large tree opens each directory once."""

    def __init__(self, root: Path | str, *, create: bool = True) -> None:
        self.root = os.path.abspath(root)
        if create:
            os.makedirs(os.path.dirname(self.root), exist_ok=True)
            with suppress(FileExistsError):
                os.mkdir(self.root, 0o755)
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise self._refusal(exc, self.root) from None
        self._fds: dict[tuple[str, ...], int] = {(): fd}

    def __enter__(self) -> ConfinedDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def _refusal(self, exc: OSError, where: str) -> Exception:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            # ELOOP: O_NOFOLLOW met a symbolic link; ENOTDIR: a file where a directory goes.
            return ConfinementError(
                f"{where}: is a symbolic link or not a directory; mailcfg writes only through "
                f"real directories below {self.root}"
            )
        return exc

    def directory(self, parts: tuple[str, ...], *, create: bool) -> int | None:
        """The descriptor of directory `parts` below the root (created when `create`), or
        None when it does not exist and `create` is false."""
        fd = self._fds.get(parts)
        if fd is not None:
            return fd
        parent = self.directory(parts[:-1], create=create)
        if parent is None:
            return None
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            with suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                raise self._refusal(exc, _describe(self.root, parts)) from None
        except OSError as exc:
            raise self._refusal(exc, _describe(self.root, parts)) from None
        self._fds[parts] = fd
        return fd

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result | None:
        """The file's own status (a symbolic link is not followed), or None when absent."""
        parent = self.directory(parts[:-1], create=False)
        if parent is None:
            return None
        try:
            return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read(self, parts: tuple[str, ...], limit: int = -1) -> bytes:
        """The bytes of file `parts` (the first `limit` bytes when `limit` >= 0);
        FileNotFoundError when absent; a symbolic link is refused, never followed."""
        parent = self.directory(parts[:-1], create=False)
        where = _describe(self.root, parts)
        if parent is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", where)
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError as exc:
            raise self._refusal(exc, where) from None
        try:
            if limit >= 0:
                return os.read(fd, limit)
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    def write(self, parts: tuple[str, ...], content: bytes, mode: int) -> None:
        """Make `parts` hold `content` with `mode`: written next to it, then renamed over it
        (a symbolic link found there is replaced, never followed)."""
        parent = self.directory(parts[:-1], create=True)
        assert parent is not None
        name = parts[-1]
        tmp = name + _TMP_SUFFIX
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=parent)
        except OSError as exc:
            raise self._refusal(exc, _describe(self.root, (*parts[:-1], tmp))) from None
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)

    def unlink(self, parts: tuple[str, ...]) -> None:
        """Remove the directory entry `parts` (a symbolic link itself, never its target)."""
        parent = self.directory(parts[:-1], create=False)
        if parent is not None:
            with suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=parent)

    def walk_files(self, parts: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        """Every entry below directory `parts` that is not a directory (symbolic links
        included, as links: a link to a directory is not entered)."""
        fd = self.directory(parts, create=False)
        if fd is None:
            return
        with os.scandir(fd) as entries:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for name, is_dir in names:
            if is_dir:
                yield from self.walk_files((*parts, name))
            else:
                yield (*parts, name)
