"""The per-host lock: an `fcntl.flock` on `/var/lib/mailcfg/lock`, held by one process from an
apply's first check to its commit.

A kernel lock cannot go stale: if the process dies the kernel releases it, so there is no
pid-liveness guess and no pid-reuse race, and no token has to be threaded through several
invocations (each a window for another apply). The lock file also records the holder (pid, host
name, start time) so a refused apply names who holds it; a record found under a free lock is the
trace of a crashed holder and is reported as a broken stale lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from .hostroot import Host, StepFailed


class HostLock:
    """Held for the whole transaction (a context manager); warnings go to `warnings`."""

    def __init__(self, host: Host, warnings: list[str]) -> None:
        self.path = host.state_path("lock")
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
