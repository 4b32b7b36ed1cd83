"""Following one growing, rotating log file: identity, resume position, rotation.

A file's identity is `dev:ino:h` where `h` hashes its first line (so a recycled inode is not
mistaken for the old file). Rotation is detected by identity, never by guessing names
(fail2ban's way):
- rename + create: the path now names another inode (or nothing) → the old file is read to its
  end through the still-open descriptor (a final line without newline included), then the new
  file is followed from offset 0;
- copytruncate: same inode but size < offset, or its first line changed → read again from 0;
- rename rotation while the agent was stopped: the saved identity is not the file at the path,
  so the rotated file is looked up by identity among its siblings (`mail.log.1`,
  `mail.log-20240501`, … : any uncompressed name that starts with the log's), finished from the
  saved offset, and then the new file is read from 0. A rotated file that was compressed or
  moved to another directory meanwhile is a new inode: its unread end is lost (logged).
A path that does not exist yet is waited for. `FollowedFile.read_chunk` returns whole lines
only and the position *after* them; the caller persists that position once the lines' counters
are stored, so a restart resumes exactly there.

Watchers (`make_watcher`; the agent config's watcher uses them too) only say "something may
have changed": `InotifyWatcher` (pyinotify, which imports `asyncore`; kept behind this interface
so a missing module only costs latency) and `PollWatcher`. The follower re-checks every file on
each wake-up and at a poll interval in any case, so a lost inotify event delays but never loses
lines.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

FIRST_LINE_MAX = 4096  # bytes of the first line hashed into the identity
CHUNK_BYTES = 4 << 20  # read at most this much per chunk (bounds memory, keeps latency low)
# Seconds a renamed-away file is still read after its last growth (its writer may not have
# reopened yet); then its last line is taken even without a newline and it is closed.
RETIRE_GRACE = 30.0


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole lines read from a file and the (identity, offset) just after them."""

    data: bytes
    identity: str
    offset: int


def _first_line_hash(fd: int) -> str:
    head = os.pread(fd, FIRST_LINE_MAX, 0)
    nl = head.find(b"\n")
    if nl < 0 and len(head) < FIRST_LINE_MAX:
        return ""  # no complete first line yet
    return hashlib.sha1(head[: nl if nl >= 0 else FIRST_LINE_MAX]).hexdigest()[:16]


def file_identity(path: str | os.PathLike[str]) -> str:
    """`dev:ino:h` of the file at `path` (the identity `FollowedFile` uses)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        return f"{st.st_dev}:{st.st_ino}:{_first_line_hash(fd)}"
    finally:
        os.close(fd)


class FollowedFile:
    """One path being followed; holds an open descriptor across rotations."""

    def __init__(self, path: str, saved: tuple[str, int] | None = None) -> None:
        self.path = path
        self._saved = saved
        self._fd: int | None = None
        self._dev_ino: tuple[int, int] = (0, 0)
        self._head = ""
        self.offset = 0
        self._retired: _Retired | None = None
        self._resume_checked = False

    @property
    def identity(self) -> str:
        return f"{self._dev_ino[0]}:{self._dev_ino[1]}:{self._head}"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._retired is not None:
            os.close(self._retired.fd)
            self._retired = None

    def _resume_rotated(self, saved: tuple[str, int]) -> None:
        """At start: if the saved position is of a file rotated away meanwhile, finish it
        first (found by identity among the siblings)."""
        try:
            st = os.stat(self.path)
            if saved[0].startswith(f"{st.st_dev}:{st.st_ino}:"):
                return  # still the same file (or copytruncated: `_open` decides)
        except FileNotFoundError:
            pass
        fd = find_rotated(self.path, saved[0])
        if fd is None:
            log.warning(
                "log %s was rotated while the agent was stopped and the old file is gone: "
                "its lines after offset %d are not counted",
                self.path,
                saved[1],
            )
            return
        size = os.fstat(fd).st_size
        if saved[1] > size:
            os.close(fd)
            return
        log.info("log %s: finishing the file rotated away while stopped", self.path)
        # Its writer is gone (it was rotated before we started): no grace for late lines.
        self._retired = _Retired(fd, saved[1], 0.0, saved[0], owns_position=True)

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EISDIR):
                log.warning("cannot read log %s: %s", self.path, exc.strerror)
                return False
            raise
        st = os.fstat(fd)
        self._fd = fd
        self._dev_ino = (st.st_dev, st.st_ino)
        self._head = _first_line_hash(fd)
        self.offset = 0
        saved, self._saved = self._saved, None
        if saved is not None and self._same_file(saved[0]) and saved[1] <= st.st_size:
            self.offset = saved[1]
        return True

    def _same_file(self, identity: str) -> bool:
        dev, ino, head = ([*identity.split(":"), "", "", ""])[:3]
        if (dev, ino) != (str(self._dev_ino[0]), str(self._dev_ino[1])):
            return False
        return not head or not self._head or head == self._head

    def read_chunk(self, limit: int = CHUNK_BYTES) -> Chunk | None:
        """The next whole lines (at most `limit` bytes unless one line is longer), or None
        when there is nothing new."""
        if self._saved is not None and not self._resume_checked:
            self._resume_checked = True
            self._resume_rotated(self._saved)
        if self._retired is not None:
            chunk = self._read_retired(limit)
            if chunk is not None:
                return chunk
        if self._fd is None and not self._open():
            return None
        assert self._fd is not None
        try:
            st = os.stat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if current != self._dev_ino:
            # Renamed or deleted: finish the old file through its descriptor first.
            chunk = self._read(self._fd, limit)
            if chunk is not None:
                return chunk
            # A writer may still append to the renamed file until it reopens (syslog's HUP):
            # keep reading it for a grace period beside the new file.
            self._retire()
            if current is None or not self._open():
                return None
            assert self._fd is not None
            return self._read(self._fd, limit)
        size = os.fstat(self._fd).st_size
        head = _first_line_hash(self._fd)
        if size < self.offset or (self._head and head != self._head):
            log.info("log %s was truncated (copytruncate): reading from the start", self.path)
            self.offset = 0
        self._head = head
        return self._read(self._fd, limit)

    def _retire(self) -> None:
        assert self._fd is not None
        if self._retired is not None:
            os.close(self._retired.fd)
        self._retired = _Retired(
            self._fd, self.offset, time.monotonic(), self.identity, owns_position=True
        )
        self._fd = None

    def _read_retired(self, limit: int) -> Chunk | None:
        retired = self._retired
        assert retired is not None
        quiet = not retired.since or time.monotonic() - retired.since > RETIRE_GRACE
        data = os.pread(retired.fd, limit, retired.offset)
        end = len(data) if quiet and len(data) < limit else data.rfind(b"\n") + 1
        if end == 0:
            if quiet:
                os.close(retired.fd)
                self._retired = None
            return None
        retired.offset += end
        if retired.since:
            retired.since = time.monotonic()
        if retired.owns_position:
            # Until the new file is read, the old file's position is the one to resume from
            # (a restart finds the old file again by identity).
            return Chunk(data[:end], retired.identity, retired.offset)
        # Late lines after the new file was read: the new file's position stays (restarting
        # from the old file would count the new file's lines twice).
        return Chunk(data[:end], self.identity, self.offset)

    def _read(self, fd: int, limit: int) -> Chunk | None:
        data = os.pread(fd, limit, self.offset)
        end = data.rfind(b"\n") + 1
        while end == 0 and len(data) == limit:
            limit *= 2  # a single line longer than `limit`: read it whole
            data = os.pread(fd, limit, self.offset)
            end = data.rfind(b"\n") + 1
        if end == 0:
            return None
        if not self._head:
            self._head = _first_line_hash(fd)
        if self._retired is not None:
            self._retired.owns_position = False
        self.offset += end
        return Chunk(data[:end], self.identity, self.offset)


@dataclass(slots=True)
class _Retired:
    """A rotated-away file still being read: its descriptor, the offset read up to, when it
    last grew (0: its writer is known to be gone) and its identity."""

    fd: int
    offset: int
    since: float
    identity: str
    owns_position: bool


_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".z")


def find_rotated(path: str, identity: str) -> int | None:
    """An open descriptor of the sibling of `path` (`<name>.1`, `<name>-20240501`, …) whose
    identity is `identity` (same dev:inode and first line), or None."""
    dev_ino, _, head = identity.rpartition(":")
    directory, name = os.path.split(os.path.abspath(path))
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        if entry.name == name or not entry.name.startswith(name):
            continue
        if entry.name.endswith(_COMPRESSED):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if f"{st.st_dev}:{st.st_ino}" != dev_ino:
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        if os.fstat(fd).st_ino == st.st_ino and (not head or _first_line_hash(fd) == head):
            return fd
        os.close(fd)
    return None


class Watcher(Protocol):
    """Wakes the follower when a followed file may have changed."""

    def fileno(self) -> int | None:
        """A descriptor that becomes readable on a change (for the event loop), or None."""
        ...

    def drain(self) -> None:
        """Consume pending notifications after the descriptor became readable."""
        ...

    def close(self) -> None: ...


class PollWatcher:
    """No notifications: the follower simply re-checks at its poll interval."""

    def fileno(self) -> int | None:
        return None

    def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


# inotify events that wake a log follower: any growth, creation, rename or deletion.
FOLLOW_EVENTS = (
    "IN_MODIFY",
    "IN_CREATE",
    "IN_MOVED_TO",
    "IN_MOVED_FROM",
    "IN_DELETE",
    "IN_CLOSE_WRITE",
    "IN_ATTRIB",
)
# Events of a file installed whole (renamed into place, or written and closed): the agent
# config's. Not every write: a busy file in the same directory (the SQLite state, say) must not
# wake its watcher on each commit.
INSTALL_EVENTS = ("IN_MOVED_TO", "IN_CLOSE_WRITE")


class InotifyWatcher:
    """pyinotify on the parent directories of the followed files (a file that does not exist
    yet, or is renamed away, is still seen), for the named `events`."""

    def __init__(self, paths: list[str], events: Sequence[str] = FOLLOW_EVENTS) -> None:
        import pyinotify  # imports asyncore: only here, so the poll fallback never needs it

        mask = 0
        for name in events:
            mask |= getattr(pyinotify, name)
        self._wm = pyinotify.WatchManager()
        dirs = sorted({os.path.dirname(os.path.abspath(p)) for p in paths})
        for d in dirs:
            self._wm.add_watch(d, mask, quiet=True)
        self._notifier = pyinotify.Notifier(self._wm, default_proc_fun=_ignore_event, timeout=0)

    def fileno(self) -> int | None:
        fd: int = self._wm.get_fd()
        return fd

    def drain(self) -> None:
        if self._notifier.check_events(timeout=0):
            self._notifier.read_events()
            self._notifier.process_events()

    def close(self) -> None:
        self._notifier.stop()


def _ignore_event(_event: object) -> None:
    return None


def make_watcher(
    paths: list[str], *, use_inotify: bool = True, events: Sequence[str] = FOLLOW_EVENTS
) -> Watcher:
    """An inotify watcher (of `events`) when available, else polling."""
    if use_inotify:
        try:
            return InotifyWatcher(paths, events)
        except (ImportError, OSError) as exc:
            log.warning("inotify unavailable (%s): polling %s instead", exc, ", ".join(paths))
    return PollWatcher()


ChunkHandler = Callable[[Chunk], None]
