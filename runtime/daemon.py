"""The agent's process lifecycle: signals, its tasks, systemd notification and the watchdog.

`Daemon.run(main, helpers)` runs the policy service (`main`) until SIGTERM/SIGINT or until it
fails, and beside it helper tasks (the log follower) under `supervise`: a helper that crashes
(say, EMFILE while opening a log) is logged and restarted with backoff; it never stops the
policy service. SIGHUP calls what `on_hangup` registered (the config watcher's reload). Under
systemd (`Type=notify`) it sends `READY=1` once the service listens, `WATCHDOG=1` from the
event loop every half `WatchdogSec=` (a stalled loop stops the pings and systemd restarts the
agent) and `STOPPING=1` on the way out. sd_notify is a datagram on an
AF_UNIX socket to `$NOTIFY_SOCKET` (libsystemd's protocol, no dependency).

`connection_cap` derives the policy service's connection limit from RLIMIT_NOFILE, leaving
room for what else needs descriptors (the store, the logs, DNS queries, notices).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0  # seconds before a crashed helper's first restart
BACKOFF_MAX = 60.0
HEALTHY_RUN = 60.0  # a helper that ran this long starts its backoff afresh
STOP_GRACE = 10.0  # seconds helpers get to finish once the service stopped


def connection_cap(nofile: int | None = None) -> int:
    """Connections the policy service may hold: the open-file limit less a reserve (a
    quarter, at least 64) for the store, the logs, inotify, DNS sockets and notice mails."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
    return max(nofile - max(64, nofile // 4), 16)


class Notifier:
    """sd_notify: datagrams to `$NOTIFY_SOCKET`; a no-op outside systemd. Never raises: a
    lost notification must not take the service down (systemd acts on the missing ones)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        raw = environ.get("NOTIFY_SOCKET", "")
        if not raw:
            return cls(None)
        if raw.startswith("@"):
            return cls("\0" + raw[1:])  # abstract namespace
        if not raw.startswith("/"):
            log.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying", raw)
            return cls(None)
        return cls(raw)

    def send(self, *states: str) -> bool:
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(states).encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", states[0].partition("=")[0], exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of systemd's WatchdogSec), None if not asked."""
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by one that got it)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def supervise(
    name: str,
    start: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    first: float = BACKOFF_FIRST,
    most: float = BACKOFF_MAX,
) -> None:
    """Run `start()` until `stop` is set, restarting it with exponential backoff whenever it
    fails (or returns early); its failures are logged and go no further."""
    delay = first
    while not stop.is_set():
        began = time.monotonic()
        try:
            await start()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting it in %.0f s", name, delay)
        else:
            if stop.is_set():
                return
            log.error("%s ended unexpectedly; restarting it in %.0f s", name, delay)
        if time.monotonic() - began >= HEALTHY_RUN:
            delay = first
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, most)


class Daemon:
    """Owns the stop event, the signal handlers, the helpers' tasks and sd_notify."""

    def __init__(self, notifier: Notifier, watchdog: float | None) -> None:
        self.notifier = notifier
        self.watchdog = watchdog
        self.stop = asyncio.Event()
        self._on_hangup: Callable[[], None] | None = None

    @classmethod
    def quiet(cls) -> Daemon:
        """Signals and tasks only: no sd_notify, no watchdog (a command run by hand)."""
        return cls(Notifier(None), None)

    def on_hangup(self, callback: Callable[[], None] | None) -> None:
        """SIGHUP calls `callback` while `run` runs (None: SIGHUP does nothing)."""
        self._on_hangup = callback

    def _hangup(self) -> None:
        if self._on_hangup is not None:
            self._on_hangup()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Daemon:
        return cls(Notifier.from_environ(environ), watchdog_interval(environ))

    def ready(self, status: str = "") -> None:
        """The service accepts requests (systemd's start job completes)."""
        self.notifier.send("READY=1", *([f"STATUS={status}"] if status else []))

    async def _ping_watchdog(self, interval: float) -> None:
        # From the event loop on purpose: a loop stalled by anything stops the pings.
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def run(
        self,
        main: Coroutine[Any, Any, None],
        helpers: Mapping[str, Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        """Run `main` (it must return once `self.stop` is set) with `helpers` supervised
        beside it, until SIGTERM/SIGINT or until `main` fails (its exception propagates)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        tasks = [
            asyncio.create_task(supervise(name, start, self.stop), name=name)
            for name, start in (helpers or {}).items()
        ]
        pinger = asyncio.create_task(self._ping_watchdog(self.watchdog)) if self.watchdog else None
        try:
            await main
        finally:
            self.stop.set()
            self.notifier.send("STOPPING=1")
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=STOP_GRACE)
                for task in late:
                    log.warning(
                        "%s did not stop within %.0f s; cancelled", task.get_name(), STOP_GRACE
                    )
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if pinger is not None:
                pinger.cancel()
                await asyncio.gather(pinger, return_exceptions=True)
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.notifier.close()
