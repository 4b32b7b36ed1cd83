"""The per-host lock: an `fcntl.flock` on `/var/lib/mailcfg/lock`, held by one process from a
change's first check to its commit (apply, rollback, recover).

A kernel lock cannot go stale: if the process dies the kernel releases it, so there is no
pid-liveness guess and no pid-reuse race, and no token has to be threaded through several
invocations (each a window for another apply). The lock file also records the holder (command,
pid, host name, start time) so a refused change names who holds it; a record found under a free
lock is the trace of a crashed holder and is reported as a broken stale lock.

A change that finds the lock held waits for it a bounded time (`MAILCFG_LOCK_WAIT` seconds,
default 30: an apply started a moment earlier usually ends within it), then gives up naming the
holder; `recover` does not wait (`wait=0`): the holder finishes or rolls back its change itself.

Directory roots have a second, machine-wide lock (`hold_tools_lock`): their validation runs this
machine's own Postfix and Dovecot tools, which share the machine's directories, while their host
locks are per root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

from .hostroot import Host, StepFailed

DEFAULT_WAIT = 30.0
_POLL = 0.1
TOOLS_LOCK = "/run/mailcfg-validate.lock"


class LockBusy(StepFailed):
    """Another process holds the lock (after the wait, if any)."""


def lock_wait() -> float:
    """Seconds a change waits for a held lock: `MAILCFG_LOCK_WAIT`, else `DEFAULT_WAIT`."""
    try:
        return max(0.0, float(os.environ.get("MAILCFG_LOCK_WAIT", DEFAULT_WAIT)))
    except ValueError:
        return DEFAULT_WAIT


def describe_holder(record: str) -> str:
    """'another apply is running on mx1 (pid 4242 since 2024-05-01 10:00:03Z)' from the
    holder's record, or the record itself when it is not one this program wrote."""
    try:
        doc = json.loads(record)
        pid, where, started = int(doc["pid"]), str(doc["host"]), int(doc["started"])
    except (ValueError, KeyError, TypeError):
        return f"another apply holds the host lock: {record or '(no record)'}"
    command = str(doc.get("command", "apply"))
    since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(started))
    return f"another {command} is running on {where} (pid {pid} since {since})"


class HostLock:
    """Held for the whole change (a context manager); warnings go to `warnings`."""

    def __init__(
        self, host: Host, warnings: list[str], command: str, wait: float | None = None
    ) -> None:
        self.path = host.state_path("lock")
        self.warnings = warnings
        self.command = command
        self.wait = lock_wait() if wait is None else wait
        self.fd = -1

    def __enter__(self) -> HostLock:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._acquire()
        except BaseException:
            os.close(self.fd)
            raise
        old = os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
        if old:
            self.warnings.append(f"broke a stale lock left by a process that is gone: {old}")
        me = {
            "command": self.command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": int(time.time()),
        }
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(me, sort_keys=True).encode(), 0)
        os.fsync(self.fd)
        return self

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(_POLL)
        holder = describe_holder(os.pread(self.fd, 4096, 0).decode(errors="replace").strip())
        waited = f"; waited {self.wait:g}s for it" if self.wait else ""
        raise LockBusy("lock", holder + waited)

    def __exit__(self, *exc: object) -> None:
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


@contextlib.contextmanager
def hold_tools_lock(host: Host, path: str = TOOLS_LOCK) -> Iterator[None]:
    """Held while a directory root is validated, so that two roots on one machine (the example
    inventory's mx1 and mx2, applied at once) never run the machine's tools together:
    `postfix check` makes the queue directories that are missing, and two at once fail with
    `mkdir: cannot create directory ...: File exists`. A real host ("/") is alone on its
    machine and holds its host lock already. A user other than root cannot open the lock in
    /run, and cannot run `postfix check` either: validation goes on without it."""
    if host.is_system:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # no wait limit: each command has its own timeout
        yield
    finally:
        os.close(fd)
