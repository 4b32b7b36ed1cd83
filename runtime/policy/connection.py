"""Policy connections: listeners, the accept loop, the connection cap, idle timeouts.

`PolicyConnection` parses requests with `RequestParser`, hands each to the service
(`runtime.policy.service.PolicyService.handle`) and writes the answers strictly in request
order, even when some need DNS (SPF, DNSBL) and later ones don't. A protocol error closes that
connection (logged, throttled); the server keeps going.

Hostile clients can't exhaust it: the listener accepts at most `max_connections` (derived from
the open-file limit by the caller); at the cap a new connection evicts the connection idle the
longest, and accepting pauses only while none is idle (all wait for answers). A connection
must complete its first request (and any later one it starts) within `request_timeout`; an
established one may idle for `idle_timeout`. Accept errors (EMFILE, ENFILE, ...) pause
accepting for a moment and never close the listener. `run_policy_service` serves one listen
address until a stop event.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import select
import socket
import stat
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

from runtime.policy.engine import MessageMemo
from runtime.policy.protocol import MAX_REQUEST, ProtocolError, RequestParser

if TYPE_CHECKING:
    from runtime.policy.service import PolicyService, ReplySlot

log = logging.getLogger(__name__)

# Just over Postfix's smtpd_policy_service_max_idle (300 s): smtpd closes an idle connection
# first, so our close never races one of its requests. Under pressure idle connections are
# evicted long before (see ConnectionTable), so this bounds nothing an attacker can use.
IDLE_TIMEOUT = 310.0
# smtpd writes a whole request as soon as it connects; a client that has not completed its
# first request (or a started one) within this is not smtpd and loses its slot.
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 1024  # the caller derives the real cap from RLIMIT_NOFILE (runtime.daemon)
MAX_PENDING = 256  # unanswered requests per connection before it is treated as abuse
LISTEN_BACKLOG = 1024
ACCEPT_BATCH = 64  # connections accepted per readiness of the listening socket
ACCEPT_PAUSE = 0.05  # seconds accepting pauses on an accept error or a full table
WARN_INTERVAL = 10.0  # seconds between repeated warnings about the cap or accept errors


class LogThrottle:
    """Warnings about what clients do, at most `burst` per `interval` seconds and then one
    count of those dropped: a flood of bad clients must not flood the journal (journald's
    rate limit would then drop the agent's other messages too)."""

    def __init__(self, burst: int = 10, interval: float = WARN_INTERVAL) -> None:
        self.burst = burst
        self.interval = interval
        self._start = -interval
        self._count = 0
        self._dropped = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._start >= self.interval:
            if self._dropped:
                log.warning("%d more such warnings not logged", self._dropped)
            self._start, self._count, self._dropped = now, 0, 0
        if self._count >= self.burst:
            self._dropped += 1
            return
        self._count += 1
        log.warning(msg, *args)


class ConnectionTable:
    """The open connections by last activity (connected, or completed a request), least
    recent first. `make_room` keeps the count under `limit` by closing the connection idle
    the longest: a client that just connected (its request perhaps not read yet) is never
    the one to go while an older idle one exists."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self._order: OrderedDict[PolicyConnection, None] = OrderedDict()
        self.opening = 0  # accepted sockets whose connection is not made yet
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[PolicyConnection]:
        return iter(list(self._order))

    def add(self, conn: PolicyConnection) -> None:
        self._order[conn] = None

    def touch(self, conn: PolicyConnection) -> None:
        """`conn` completed a request: it is the most recently active one."""
        if conn in self._order:
            self._order.move_to_end(conn)

    def discard(self, conn: PolicyConnection) -> None:
        self._order.pop(conn, None)

    def full(self) -> bool:
        return len(self._order) + self.opening >= self.limit

    def make_room(self) -> bool:
        """True if one more connection may be accepted, after evicting an idle one if the
        table is full; False while every connection waits for an answer."""
        if not self.full():
            return True
        for conn in self._order:
            if not conn.slots:  # waiting for our answer is not idle
                self.discard(conn)
                conn.evict()
                self.evicted += 1
                return True
        return False


class PolicyConnection(asyncio.Protocol):
    def __init__(self, service: PolicyService, *, accepted: bool = False) -> None:
        self.service = service
        # Counted in the table's `opening` (by the listener) until connection_made.
        self.accepted = accepted
        self.parser = RequestParser(MAX_REQUEST)
        self.slots: deque[ReplySlot] = deque()
        self.memo = MessageMemo()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.served = False  # completed a request
        self._opened = 0.0
        self._last = 0.0
        self._partial: float | None = None  # when the incomplete request held began
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = str(transport.get_extra_info("peername") or "unix")
        table = self.service.connections
        if self.accepted:
            self.accepted = False
            table.opening -= 1
        table.add(self)
        self._opened = self._last = time.monotonic()
        self._arm(self.service.request_timeout)

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _rearm_within(self, delay: float) -> None:
        """Make the timer fire within `delay` (it may be armed for the long idle timeout)."""
        timer = self._timer
        if timer is not None and timer.when() - asyncio.get_running_loop().time() > delay:
            timer.cancel()
            self._arm(delay)

    def _deadline(self) -> float:
        svc = self.service
        if not self.served:
            return self._opened + svc.request_timeout
        deadline = self._last + svc.idle_timeout
        if self._partial is not None:
            deadline = min(deadline, self._partial + svc.request_timeout)
        return deadline

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: no timer churn per request.
        self._timer = None
        if self.transport is None:
            return
        now = time.monotonic()
        deadline = self._deadline()
        if now >= deadline and not self.slots:
            log.debug("closing idle policy connection from %s", self.peer)
            self.close()
        else:
            self._arm(max(deadline - now, 0.05))

    def data_received(self, data: bytes) -> None:
        now = self._last = time.monotonic()
        try:
            requests = self.parser.feed(data)
        except ProtocolError as exc:
            self.service.client_warnings.warning(
                "policy client %s: %s; closing the connection", self.peer, exc
            )
            self.close()
            return
        if requests:
            self.served = True
            self.service.connections.touch(self)
            self._partial = now if self.parser.pending else None
        elif self._partial is None and self.parser.pending:
            self._partial = now
            self._rearm_within(self.service.request_timeout)
        for req in requests:
            self.slots.append(self.service.handle(req, self))
        if len(self.slots) > MAX_PENDING:
            self.service.client_warnings.warning(
                "policy client %s: %d unanswered requests; closing the connection",
                self.peer,
                len(self.slots),
            )
            self.close()
            return
        if self.slots and self.slots[0].reply is not None:
            self.flush_replies()

    def flush_replies(self) -> None:
        """Write the replies that are ready, in request order, in one write."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        slots = self.slots
        if len(slots) == 1:  # one request at a time is what smtpd does
            reply = slots[0].reply
            if reply is not None:
                slots.clear()
                transport.write(reply)
            return
        out = []
        while slots:
            reply = slots[0].reply
            if reply is None:
                break
            out.append(reply)
            slots.popleft()
        if out:
            transport.write(b"".join(out))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def evict(self) -> None:
        """Make room for a new connection: nothing is pending, so drop at once (an evicted
        smtpd reconnects for its next request)."""
        log.debug("evicting idle policy connection from %s", self.peer)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None


# -- listeners ----------------------------------------------------------------------------


class ListenAddress(NamedTuple):
    """A parsed `listen` value: `unix:/PATH` (port 0) or `tcp:HOST:PORT`."""

    kind: str
    where: str
    port: int = 0


def parse_listen(listen: str) -> ListenAddress:
    """`unix:/path` or `tcp:host:port` (`tcp:[::1]:port` for IPv6); ValueError otherwise. The
    one parser for starting the service, checking a reloaded config and `ping`."""
    kind, _, where = listen.partition(":")
    if kind == "unix" and where.startswith("/") and "\0" not in where:
        return ListenAddress("unix", where)
    if kind == "tcp":
        host, _, port = where.rpartition(":")
        host = host.strip("[]")
        if host and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
            return ListenAddress("tcp", host, int(port))
    raise ValueError(f"listen address {listen!r}: expected unix:/PATH or tcp:HOST:PORT")


def _prepare_unix_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ValueError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()


def _open_unix_access(path: Path) -> None:
    """smtpd runs as user postfix: group postfix + 0660 where that group exists. Under the
    unit the agent's own group is postfix, so the socket has it already and no chown is made:
    the unit's system-call filter refuses chown (`~@privileged`)."""
    try:
        gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        log.warning("no 'postfix' group: %s is mode 0660 for its owner's group only", path)
    else:
        if path.stat().st_gid != gid:
            with contextlib.suppress(PermissionError):
                os.chown(path, -1, gid)
    os.chmod(path, 0o660)


def open_listen_sockets(address: ListenAddress) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for `address` (every address a TCP host name
    resolves to)."""
    socks: list[socket.socket] = []
    try:
        if address.kind == "unix":
            path = Path(address.where)
            _prepare_unix_socket(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(str(path))
            _open_unix_access(path)
        else:
            infos = socket.getaddrinfo(
                address.where, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            for family, kind, proto, _, addr in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
        for sock in socks:
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _has_pending_connection(sock: socket.socket) -> bool:
    poller = select.poll()  # not select(): descriptors may be above FD_SETSIZE
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class PolicyListener:
    """Accepts connections for `service` on its own sockets (not `loop.create_server`, whose
    listener gives up on EMFILE): at the connection cap it evicts the connection idle the
    longest before accepting, and pauses only while no connection is idle; an accept error
    pauses for `ACCEPT_PAUSE` and is retried, never fatal."""

    def __init__(self, socks: Sequence[socket.socket], service: PolicyService) -> None:
        self.socks = list(socks)
        self.service = service
        self.loop = asyncio.get_running_loop()
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False
        self._connecting: set[asyncio.Task[None]] = set()
        self._warnings = LogThrottle(burst=1)

    def start(self) -> None:
        for sock in self.socks:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _stop_reading(self) -> None:
        for sock in self.socks:
            self.loop.remove_reader(sock.fileno())

    def _pause(self) -> None:
        self._stop_reading()
        self._paused = self.loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self.start()

    def _warn(self, msg: str, *args: object) -> None:
        self._warnings.warning(msg, *args)

    def _accept(self, sock: socket.socket) -> None:
        table = self.service.connections
        for i in range(ACCEPT_BATCH):
            if i and table.full() and not _has_pending_connection(sock):
                return  # evict only for a connection that is really waiting
            evicted = table.evicted
            if not table.make_room():
                self._warn("policy connections: all %d busy; accepting paused", table.limit)
                self._pause()
                return
            if table.evicted != evicted:
                self._warn(
                    "policy connections at the cap (%d): evicting the longest idle; %d so far",
                    table.limit,
                    table.evicted,
                )
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up before we got to it
                # EMFILE/ENFILE/ENOBUFS/ENOMEM: the reserve under the cap ran out (DNS,
                # notices, the store). Idle connections being closed free descriptors soon.
                self._warn("accepting a policy connection failed: %s; retrying", exc)
                self._pause()
                return
            table.opening += 1
            task = self.loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        made: list[PolicyConnection] = []

        def make() -> PolicyConnection:
            made.append(PolicyConnection(self.service, accepted=True))
            return made[0]

        try:
            conn.setblocking(False)
            await self.loop.connect_accepted_socket(make, conn)
        except OSError as exc:
            log.debug("policy connection lost while being set up: %s", exc)
            conn.close()
            if not made or made[0].accepted:  # connection_made never came
                self.service.connections.opening -= 1

    def close(self) -> None:
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._stop_reading()
        for sock in self.socks:
            sock.close()

    async def wait_closed(self) -> None:
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)


async def start_listener(listen: str, service: PolicyService) -> PolicyListener:
    """`unix:/path` or `tcp:host:port`."""
    listener = PolicyListener(open_listen_sockets(parse_listen(listen)), service)
    listener.start()
    return listener


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed, else asyncio's. The policy service spends
    much of each decision in the loop's socket handling, which uvloop does in C."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def run_policy_service(
    listen: str,
    service: PolicyService,
    stop: asyncio.Event,
    *,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve until `stop` is set, then stop listening, close connections and finish work.
    `on_listening` is called once the socket accepts connections (sd_notify READY=1)."""
    listener = await start_listener(listen, service)
    log.info(
        "policy service listening on %s (at most %d connections)",
        listen,
        service.connections.limit,
    )
    try:
        if on_listening is not None:
            on_listening()
        await stop.wait()
    finally:
        listener.close()
        await listener.wait_closed()
        for conn in list(service.connections):
            conn.close()
        await service.drain()
        address = parse_listen(listen)
        if address.kind == "unix":
            with contextlib.suppress(OSError):
                Path(address.where).unlink()
