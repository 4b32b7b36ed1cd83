"""Read files of the untrusted inventory: regular files only, never through a link.

The directory given to mailcfg is trusted; below it, entries are opened relative to their
directory's descriptor with `O_NOFOLLOW`, so a symbolic link (even one swapped in after the
check), a FIFO, socket or device is refused with a reason (`Refused`) instead of read, and a
file over `MAX_FILE_BYTES` is refused unread. `compiler.load.inventory` turns the reasons into
located diagnostics.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Bounds memory: a YAML file costs up to ~75 bytes of parser memory per byte. The benchmark's
# largest file (50,000 accounts in one file) is 9.1 MB.
MAX_FILE_BYTES = 16 * 1024 * 1024
DOMAIN_SUFFIXES = (".yml", ".yaml")
_REGULAR_ONLY = "mailcfg reads only regular files inside the inventory"
# O_NOFOLLOW: a file swapped for a link after its lstat still is not followed; O_NONBLOCK: nor
# does a FIFO swapped in block the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """An entry of the inventory that is not read; the message says why."""


def open_root(root: Path) -> int | None:
    """The inventory directory (trusted, so followed if it is a link), or None if absent."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def describe_non_regular(mode: int) -> str | None:
    """Why an entry of this mode is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return f"is a symbolic link; {_REGULAR_ONLY}"
    if stat.S_ISDIR(mode):
        return f"is a directory; {_REGULAR_ONLY}"
    return f"is not a regular file (a FIFO, socket or device); {_REGULAR_ONLY}"


def read_regular(name: str, dir_fd: int) -> bytes:
    """The bytes of the regular file `name` in the directory `dir_fd`; raise `Refused` for
    anything else (a link is never followed, a FIFO or device never opened) or an oversized
    file, FileNotFoundError when it is absent."""
    problem = describe_non_regular(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    if problem:
        raise Refused(problem)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link since the lstat
            raise Refused(describe_non_regular(stat.S_IFLNK)) from None
        raise
    try:
        st = os.fstat(fd)
        problem = describe_non_regular(st.st_mode)
        if problem:
            raise Refused(problem)
        chunks: list[bytes] = []
        total = st.st_size if st.st_size > MAX_FILE_BYTES else 0  # refused unread
        while total <= MAX_FILE_BYTES:  # also bounds a file that grows while read
            chunk = os.read(fd, max(st.st_size + 1 - total, 1 << 16))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
        raise Refused(
            f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, the limit for "
            "one inventory file; split it"
        )
    finally:
        os.close(fd)


def open_directory(name: str, dir_fd: int) -> int:
    """The descriptor of the directory `name` in `dir_fd`; raise `Refused` for a link or a
    non-directory, FileNotFoundError when it is absent."""
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        raise Refused(describe_non_regular(mode))
    if not stat.S_ISDIR(mode):
        raise Refused("is not a directory")
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def list_domain_files(dir_fd: int) -> list[str]:
    """Names of the domain files: `*.yml` / `*.yaml`, not hidden (whatever their type: a
    link or a directory with such a name is reported, not skipped)."""
    return sorted(
        name
        for name in os.listdir(dir_fd)
        if name.endswith(DOMAIN_SUFFIXES) and not name.startswith(".")
    )
