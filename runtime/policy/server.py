"""The asyncio policy server: listeners, connections, idle timeouts, batching, fail-safe.

Each connection parses requests with `RequestParser` and answers them strictly in order, even
when some need DNS (SPF, DNSBL) and later ones don't. Decisions that touch the state store
(outbound limits, statistics counters) are queued and executed once per event-loop pass in ONE
store transaction (`consume_limits`: one SQLite commit, or one Redis script call), on the loop
thread: no thread hop per request, and under load many decisions share one commit or round
trip (while the loop waits, the next batch queues up in the sockets). A reply is written only
after its commit, so a `kill -9` never loses a counted, answered decision.

Failures never kill the server: a protocol error closes that connection (logged); an exception
in a check answers the configured fail-safe action (by default DEFER_IF_PERMIT inbound and
DEFER outbound: the agent fails closed); a batch the store refuses is decided again request by
request, so only the request that fails gets the fail-safe answer.

Hostile clients can't exhaust it: the listener accepts at most `max_connections` (derived from
the open-file limit by the caller); at the cap a new connection evicts the connection idle the
longest, and accepting pauses only while none is idle (all wait for answers). A connection
must complete its first request (and any later one it starts) within `request_timeout`; an
established one may idle for `idle_timeout`. Accept errors (EMFILE, ENFILE, ...) pause
accepting for a moment and never close the listener.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, cast

from runtime.notify import NoticeJob, deliver_whitelist_notice, make_lock_alert, send_mail
from runtime.policy.checks import Verdict, check_limit_result
from runtime.policy.engine import MessageMemo, Policy
from runtime.policy.protocol import MAX_REQUEST, ProtocolError, RequestParser, format_reply
from runtime.state.base import StateStore
from runtime.state.limits import LimitRequest, LimitResult, LimitStore
from schemas.agent import AgentConfig
from schemas.policy import FailAction

log = logging.getLogger(__name__)

DUNNO_REPLY = format_reply("DUNNO")
# Just over Postfix's smtpd_policy_service_max_idle (300 s): smtpd closes an idle connection
# first, so our close never races one of its requests. Under pressure idle connections are
# evicted long before (see ConnectionTable), so this bounds nothing an attacker can use.
IDLE_TIMEOUT = 310.0
# smtpd writes a whole request as soon as it connects; a client that has not completed its
# first request (or a started one) within this is not smtpd and loses its slot.
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 1024  # the caller derives the real cap from RLIMIT_NOFILE (runtime.daemon)
MAX_PENDING = 256  # unanswered requests per connection before it is treated as abuse
# Whitelist notices being decided at once (each may do SPF lookups): beyond it, a flood of
# rejects (say, forged senders) gets no notices rather than a growing backlog.
MAX_NOTICES = 16
# Loop time the one-by-one retry of a refused batch may take: a store that is down (not one
# poisoned request) fails the rest of the batch at once instead of stalling every client.
RETRY_BUDGET = 0.1
LISTEN_BACKLOG = 1024
ACCEPT_BATCH = 64  # connections accepted per readiness of the listening socket
ACCEPT_PAUSE = 0.05  # seconds accepting pauses on an accept error or a full table
WARN_INTERVAL = 10.0  # seconds between repeated warnings about the cap or accept errors


def fail_action(action: FailAction, what: str) -> str:
    if action is FailAction.DUNNO:
        return "DUNNO"
    return f"{action.value} 4.3.5 {what} temporarily unavailable; try again later"


class _Slot:
    __slots__ = ("reply",)

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply


@dataclass
class _Batch:
    limits: list[tuple[LimitRequest, _Slot, PolicyConnection]] = field(default_factory=list)
    stats: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    after_stats: list[tuple[_Slot, bytes]] = field(default_factory=list)
    conns: set[PolicyConnection] = field(default_factory=set)


class PolicyService:
    """What all connections share: the current `Policy`, the store, the pending batch."""

    def __init__(
        self,
        policy: Policy,
        store: LimitStore,
        *,
        clock: Callable[[], float] = time.time,
        send_alert: Callable[[AgentConfig, str, LimitResult, float], None] | None = None,
        send_notice: Callable[[Policy, NoticeJob, StateStore], None] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.policy = policy
        self.store = store
        self.clock = clock
        self.send_alert = send_alert if send_alert is not None else send_lock_alert
        self.send_notice = send_notice if send_notice is not None else send_whitelist_notice
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.connections = ConnectionTable(max_connections)
        self.client_warnings = LogThrottle()
        self._batch = _Batch()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._notices = 0

    def set_policy(self, policy: Policy) -> None:
        """Swap in a new policy (built and checked by the caller before: see
        runtime.config.prepare_policy); requests already being decided finish with the old."""
        self.policy = policy

    # -- per request ----------------------------------------------------------------------

    def handle(self, req: Mapping[str, str], conn: PolicyConnection) -> _Slot:
        policy = self.policy
        slot = _Slot()
        try:
            lreq = policy.outbound_request(req, self.clock())
            if lreq is not None:
                self._batch.limits.append((lreq, slot, conn))
                self._schedule_flush(conn)
                return slot
            rcpt = policy.inbound_recipient(req)
            if rcpt is None:
                slot.reply = DUNNO_REPLY
                return slot
            verdict = policy.check_lists(req, rcpt)
            if verdict is not None and verdict.notice:
                self._spawn_notice(policy, req, verdict)
            if verdict is None and policy.needs_dns(req):
                task = asyncio.ensure_future(self._check_dns(policy, req, rcpt, conn, slot))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return slot
            self._finish(slot, verdict, conn)
        except Exception:
            log.exception("policy check failed; answering the fail-safe action")
            slot.reply = format_reply(fail_action(policy.config.fail_action_inbound, "policy"))
        return slot

    async def _check_dns(
        self,
        policy: Policy,
        req: Mapping[str, str],
        account: str,
        conn: PolicyConnection,
        slot: _Slot,
    ) -> None:
        try:
            verdict: Verdict | None = await policy.check_dns(req, account, conn.memo)
        except Exception:
            log.exception("SPF/DNSBL check failed; answering the fail-safe action")
            verdict = Verdict(fail_action(policy.config.fail_action_inbound, "policy"))
        self._finish(slot, verdict, conn)
        conn.flush_replies()

    def _finish(self, slot: _Slot, verdict: Verdict | None, conn: PolicyConnection) -> None:
        if verdict is None:
            slot.reply = DUNNO_REPLY
            return
        if verdict.counters and verdict.account:
            day = time.strftime("%Y-%m-%d", time.localtime(self.clock()))
            counters = self._batch.stats.setdefault((day, verdict.account), {})
            for name in verdict.counters:
                counters[name] = counters.get(name, 0) + 1
            # The reply waits for the counters' write like a limit decision does.
            self._batch.after_stats.append((slot, format_reply(verdict.action)))
            self._schedule_flush(conn)
            return
        slot.reply = format_reply(verdict.action)

    # -- batched store work ---------------------------------------------------------------

    def _schedule_flush(self, conn: PolicyConnection) -> None:
        self._batch.conns.add(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        batch, self._batch = self._batch, _Batch()
        self._answer(batch, self._write_limits(batch))
        self._write_stats(batch)
        for slot, reply in batch.after_stats:
            slot.reply = reply
        for conn in batch.conns:
            conn.flush_replies()

    def _write_limits(self, batch: _Batch) -> list[LimitResult | None]:
        """Decide the batch's limits in one store call; if the store refuses the batch, decide
        its requests one by one so that only a request that fails itself is None (fail-safe),
        and its unrelated neighbours are decided as usual."""
        requests = [r for r, _, _ in batch.limits]
        if not requests:
            return []
        try:
            return list(self.store.consume_limits(requests))
        except Exception as exc:
            if len(requests) == 1:
                log_store_failure(requests[0].account, exc)
                return [None]
        log.warning("state backend refused a batch of %d; deciding one by one", len(requests))
        return self._write_limits_one_by_one(requests)

    def _write_limits_one_by_one(
        self, requests: Sequence[LimitRequest]
    ) -> list[LimitResult | None]:
        results: list[LimitResult | None] = []
        deadline = time.monotonic() + RETRY_BUDGET
        for i, req in enumerate(requests):
            if time.monotonic() > deadline:
                # A store that is down, not one bad request: don't stall the loop on it.
                log.error(
                    "state backend too slow; %d requests get the outbound fail-safe action",
                    len(requests) - i,
                )
                results += [None] * (len(requests) - i)
                break
            try:
                results += self.store.consume_limits([req])
            except Exception as exc:
                log_store_failure(req.account, exc)
                results.append(None)
        return results

    def _write_stats(self, batch: _Batch) -> None:
        # One call per account-day: a failing write loses only that account's counters.
        for (day, account), counters in batch.stats.items():
            try:
                self.store.add_stats(day, account, counters)
            except Exception:
                log.exception("state backend failed; statistics of %r lost", account)

    def _answer(self, batch: _Batch, results: Sequence[LimitResult | None]) -> None:
        """Set the replies of the batch's limit decisions (fail-safe where a result is None)."""
        policy = self.policy
        fail: bytes | None = None
        for (req, slot, _), res in zip(batch.limits, results, strict=True):
            if res is None:
                if fail is None:
                    action = fail_action(policy.config.fail_action_outbound, "sending limit")
                    fail = format_reply(action)
                slot.reply = fail
                continue
            if res.allowed:  # the common case, without building a Verdict
                slot.reply = DUNNO_REPLY
                continue
            slot.reply = format_reply(check_limit_result(res, req.account).action)
            if res.newly_locked:
                log.warning("locked %s: %s (%s)", req.account, req.reason, dict(res.counts))
                self._spawn_alert(policy.config, req.account, res, req.now)

    def _spawn_alert(self, config: AgentConfig, account: str, res: LimitResult, now: float) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self.send_alert, config, account, res, now)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def _spawn_notice(self, policy: Policy, req: Mapping[str, str], verdict: Verdict) -> None:
        # In a worker thread: SPF, the ledger and SMTP must never delay the reject itself.
        job = policy.notice_job(req, verdict, self.clock())
        if job is None:
            return
        if self._notices >= MAX_NOTICES:
            log.warning("whitelist notice to %s skipped: %d being sent", job.sender, MAX_NOTICES)
            return
        self._notices += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self.send_notice, policy, job, self.store)
        self._tasks.add(fut)
        fut.add_done_callback(self._notice_done)

    def _notice_done(self, fut: asyncio.Future[None]) -> None:
        self._notices -= 1
        self._tasks.discard(fut)

    async def drain(self) -> None:
        """Wait for DNS checks and alert mails still running."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def log_store_failure(account: str, exc: Exception) -> None:
    # A hostile request (an account name that is not UTF-8) can cause this at will: one line
    # each, the traceback only when debugging.
    log.error(
        "state backend failed for %r (%s: %s); answering the outbound fail-safe action",
        account,
        type(exc).__name__,
        exc,
        exc_info=log.isEnabledFor(logging.DEBUG),
    )


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


def send_lock_alert(config: AgentConfig, account: str, res: LimitResult, now: float) -> None:
    reason = f"{res.exceeded} sending limit exceeded" if res.exceeded else "locked"
    send_mail(config.notify_smtp, make_lock_alert(config, account, reason, res.counts, now))


def send_whitelist_notice(policy: Policy, job: NoticeJob, store: StateStore) -> None:
    config = policy.config
    try:
        outcome = deliver_whitelist_notice(
            config,
            job,
            store,
            policy.notice_spf_result,
            lambda msg, to: send_mail(config.notify_smtp, msg, to),
        )
    except Exception:
        log.exception("whitelist notice to %s about %s failed", job.sender, job.recipient)
        return
    log.info("whitelist notice to %s about %s: %s", job.sender, job.recipient, outcome)


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
        self.slots: deque[_Slot] = deque()
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
    """smtpd runs as user postfix: group postfix + 0660 where that group exists."""
    try:
        gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        log.warning("no 'postfix' group: %s is mode 0660 for its owner's group only", path)
    else:
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
