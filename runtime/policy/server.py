"""The asyncio policy server: listeners, connections, idle timeouts, batching, fail-safe.

Each connection parses requests with `RequestParser` and answers them strictly in order, even
when some need DNS (SPF, DNSBL) and later ones don't. Decisions that touch the state store
(outbound limits, statistics counters) are queued and executed once per event-loop pass in ONE
store transaction (`consume_limits`: one SQLite commit, or one Redis script call), on the loop
thread: no thread hop per request, and under load many decisions share one commit or round
trip (while the loop waits, the next batch queues up in the sockets). A reply is written only
after its commit, so a `kill -9` never loses a counted, answered decision.

Failures never kill the server: a protocol error closes that connection (logged); an exception
in a check answers the configured fail-safe action (inbound: DUNNO by default; outbound: DEFER).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

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
IDLE_TIMEOUT = 600.0  # longer than Postfix's smtpd_policy_service_max_idle (300s)
MAX_PENDING = 256  # unanswered requests per connection before it is treated as abuse
# Whitelist notices being decided at once (each may do SPF lookups): beyond it, a flood of
# rejects (say, forged senders) gets no notices rather than a growing backlog.
MAX_NOTICES = 16


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
    ) -> None:
        self.policy = policy
        self.store = store
        self.clock = clock
        self.send_alert = send_alert if send_alert is not None else send_lock_alert
        self.send_notice = send_notice if send_notice is not None else send_whitelist_notice
        self.idle_timeout = idle_timeout
        self.connections: set[PolicyConnection] = set()
        self._batch = _Batch()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._notices = 0

    def set_config(self, config: AgentConfig) -> None:
        """Swap in a new config; requests already being decided finish with the old one."""
        self.policy = Policy(config)

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
            account = policy.inbound_account(req)
            if account is None:
                slot.reply = DUNNO_REPLY
                return slot
            verdict = policy.check_lists(req, account)
            if verdict is not None and verdict.notice:
                self._spawn_notice(policy, req, verdict)
            if verdict is None and policy.needs_dns(req):
                task = asyncio.ensure_future(self._check_dns(policy, req, account, conn, slot))
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

    def _write_limits(self, batch: _Batch) -> list[LimitResult] | None:
        """Decide the batch's limits; None if the store failed."""
        if not batch.limits:
            return None
        try:
            return self.store.consume_limits([r for r, _, _ in batch.limits])
        except Exception:
            log.exception("state backend failed; answering the outbound fail-safe action")
            return None

    def _write_stats(self, batch: _Batch) -> None:
        for (day, account), counters in batch.stats.items():
            try:
                self.store.add_stats(day, account, counters)
            except Exception:
                log.exception("state backend failed; statistics of %s lost", account)

    def _answer(self, batch: _Batch, results: list[LimitResult] | None) -> None:
        """Set the replies of the batch's limit decisions (fail-safe if `results` is None)."""
        policy = self.policy
        items = batch.limits
        if results is None:
            fail = format_reply(fail_action(policy.config.fail_action_outbound, "sending limit"))
            for _, slot, _ in items:
                slot.reply = fail
        else:
            for (req, slot, _), res in zip(items, results, strict=True):
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


class PolicyConnection(asyncio.Protocol):
    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self.parser = RequestParser(MAX_REQUEST)
        self.slots: deque[_Slot] = deque()
        self.memo = MessageMemo()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = str(transport.get_extra_info("peername") or "unix")
        self.service.connections.add(self)
        self._last = time.monotonic()
        self._arm(self.service.idle_timeout)

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: no timer churn per request.
        idle = time.monotonic() - self._last
        if idle >= self.service.idle_timeout and not self.slots:
            log.debug("closing idle policy connection from %s", self.peer)
            self.close()
        else:
            self._arm(max(self.service.idle_timeout - idle, 1.0))

    def data_received(self, data: bytes) -> None:
        self._last = time.monotonic()
        try:
            requests = self.parser.feed(data)
        except ProtocolError as exc:
            log.warning("policy client %s: %s; closing the connection", self.peer, exc)
            self.close()
            return
        for req in requests:
            self.slots.append(self.service.handle(req, self))
        if len(self.slots) > MAX_PENDING:
            log.warning(
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self.transport = None


# -- listeners ----------------------------------------------------------------------------


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


async def start_listener(listen: str, service: PolicyService) -> asyncio.base_events.Server:
    """`unix:/path` or `tcp:host:port`."""
    loop = asyncio.get_running_loop()
    kind, _, where = listen.partition(":")
    if kind == "unix" and where:
        path = Path(where)
        _prepare_unix_socket(path)
        server = await loop.create_unix_server(lambda: PolicyConnection(service), str(path))
        _open_unix_access(path)
        return server
    if kind == "tcp" and where:
        host, _, port = where.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"listen address {listen!r}: expected tcp:HOST:PORT")
        return await loop.create_server(
            lambda: PolicyConnection(service), host, int(port), reuse_address=True
        )
    raise ValueError(f"listen address {listen!r}: expected unix:/PATH or tcp:HOST:PORT")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed, else asyncio's. The policy service spends
    much of each decision in the loop's socket handling, which uvloop does in C."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def run_policy_service(listen: str, service: PolicyService, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, then stop listening, close connections and finish work."""
    server = await start_listener(listen, service)
    log.info("policy service listening on %s", listen)
    try:
        await stop.wait()
    finally:
        server.close()
        for conn in list(service.connections):
            conn.close()
        await server.wait_closed()
        await service.drain()
        if listen.startswith("unix:"):
            with contextlib.suppress(OSError):
                Path(listen[5:]).unlink()
