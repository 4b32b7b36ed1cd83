"""The policy service: what every connection shares (the current `Policy`, the store), the
batching of store work, the side effects of decisions (lock alerts, whitelist notices) and the
fail-safe answers.

Decisions that touch the state store (outbound limits, statistics counters) are queued and
executed once per event-loop pass in ONE store transaction (`consume_limits`: one SQLite
commit, or one Redis script call), on the loop thread: no thread hop per request, and under
load many decisions share one commit or round trip (while the loop waits, the next batch
queues up in the sockets). A reply is written only after its commit, so a `kill -9` never
loses a counted, answered decision.

Failures never kill the service: an exception in a check answers the configured fail-safe
action (by default DEFER_IF_PERMIT inbound and DEFER outbound: the agent fails closed); a
batch the store refuses is decided again request by request, so only the request that fails
gets the fail-safe answer. Connections and listeners: runtime.policy.connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from runtime.notify import NoticeJob, deliver_whitelist_notice, make_lock_alert, send_mail
from runtime.policy.checks import Verdict, check_limit_result
from runtime.policy.connection import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    ConnectionTable,
    LogThrottle,
    PolicyConnection,
)
from runtime.policy.engine import Policy
from runtime.policy.protocol import format_reply
from runtime.state.base import StateStore
from runtime.state.limits import LimitRequest, LimitResult, LimitStore
from schemas.agent import AgentConfig
from schemas.policy import FailAction

log = logging.getLogger(__name__)

DUNNO_REPLY = format_reply("DUNNO")
# Whitelist notices being decided at once (each may do SPF lookups): beyond it, a flood of
# rejects (say, forged senders) gets no notices rather than a growing backlog.
MAX_NOTICES = 16
# Loop time the one-by-one retry of a refused batch may take: a store that is down (not one
# poisoned request) fails the rest of the batch at once instead of stalling every client.
RETRY_BUDGET = 0.1


def fail_action(action: FailAction, what: str) -> str:
    if action is FailAction.DUNNO:
        return "DUNNO"
    return f"{action.value} 4.3.5 {what} temporarily unavailable; try again later"


class ReplySlot:
    """One request's place in its connection's answer order: the reply, None until decided."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply


@dataclass
class _Batch:
    limits: list[LimitRequest] = field(default_factory=list)
    slots: list[ReplySlot] = field(default_factory=list)  # each limit request's
    stats: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    after_stats: list[tuple[ReplySlot, bytes]] = field(default_factory=list)
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

    def handle(self, req: Mapping[str, str], conn: PolicyConnection) -> ReplySlot:
        policy = self.policy
        slot = ReplySlot()
        try:
            lreq = policy.outbound_request(req, self.clock())
            if lreq is not None:
                batch = self._batch
                batch.limits.append(lreq)
                batch.slots.append(slot)
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
        slot: ReplySlot,
    ) -> None:
        try:
            verdict: Verdict | None = await policy.check_dns(req, account, conn.memo)
        except Exception:
            log.exception("SPF/DNSBL check failed; answering the fail-safe action")
            verdict = Verdict(fail_action(policy.config.fail_action_inbound, "policy"))
        self._finish(slot, verdict, conn)
        conn.flush_replies()

    def _finish(self, slot: ReplySlot, verdict: Verdict | None, conn: PolicyConnection) -> None:
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
        requests = batch.limits
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
        for req, slot, res in zip(batch.limits, batch.slots, results, strict=True):
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
                log.warning("locked %s: %s", req.account, res.lock_reason or req.reason)
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


def send_lock_alert(config: AgentConfig, account: str, res: LimitResult, now: float) -> None:
    reason = res.lock_reason or (
        f"{res.exceeded} sending limit exceeded" if res.exceeded else "locked"
    )
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
