"""Behaviour every StateStore backend must show; subclasses provide a `store` fixture."""

from __future__ import annotations

import time
from typing import Any

from runtime.state.base import STAT_COUNTERS, Window
from runtime.state.limits import LOCK_REASON, LimitRequest, LimitRule, charge_sent_mail

# 2024-05-01 10:00 local time: buckets are local-calendar, so tests anchor in local time.
T0 = time.mktime((2024, 5, 1, 10, 0, 0, 0, 0, -1))


def _req(account: str, amount: int, limit: int, now: float = T0, lock: bool = True) -> LimitRequest:
    return LimitRequest(account, amount, [Window("hour", limit)], now, lock=lock, reason="r")


class StoreContract:
    def test_consume_until_limit_then_refuse(self, store: Any) -> None:
        w = [Window("hour", 5), Window("day", 100)]
        results = [store.consume("a@x.org", 2, w, T0) for _ in range(3)]
        assert [r.allowed for r in results] == [True, True, False]
        assert results[2].exceeded == "hour"
        assert results[1].counts["hour"] == 4
        # Refused amount was not counted: one more unit still fits.
        assert store.consume("a@x.org", 1, w, T0).counts["hour"] == 5

    def test_all_windows_enforced(self, store: Any) -> None:
        w = [Window("hour", 100), Window("day", 3), Window("month", 100)]
        assert store.consume("a@x.org", 3, w, T0).allowed
        r = store.consume("a@x.org", 1, w, T0 + 7200)  # new hour, same day
        assert not r.allowed and r.exceeded == "day"

    def test_new_bucket_resets(self, store: Any) -> None:
        w = [Window("hour", 1)]
        assert store.consume("a@x.org", 1, w, T0).allowed
        assert not store.consume("a@x.org", 1, w, T0).allowed
        assert store.consume("a@x.org", 1, w, T0 + 3600).allowed

    def test_force_always_adds_and_reports(self, store: Any) -> None:
        w = [Window("day", 2)]
        assert store.consume("a@x.org", 2, w, T0).allowed
        r = store.consume("a@x.org", 3, w, T0, force=True)
        assert not r.allowed and r.exceeded == "day" and r.counts["day"] == 5

    def test_accounts_independent(self, store: Any) -> None:
        w = [Window("day", 1)]
        assert store.consume("a@x.org", 1, w, T0).allowed
        assert store.consume("b@x.org", 1, w, T0).allowed

    def test_consume_limits_locks_once(self, store: Any) -> None:
        res = store.consume_limits([_req("a@x.org", 1, 1) for _ in range(4)])
        assert [r.allowed for r in res] == [True, False, False, False]
        assert [r.newly_locked for r in res] == [False, True, False, False]
        assert [r.locked for r in res] == [False, False, True, True]
        assert store.is_locked("a@x.org")
        # The lock names the window, its limit and the count that tripped it.
        message = "r: 2 recipients this hour, over the per-hour limit of 1"
        assert store.locks() == {"a@x.org": message} and res[1].lock_reason == message
        # Locked: refused even in a new window.
        assert store.consume_limits([_req("a@x.org", 1, 1, now=T0 + 86400 * 40)])[0].locked
        assert store.unlock("a@x.org")
        assert not store.unlock("a@x.org")
        assert store.consume_limits([_req("a@x.org", 1, 1, now=T0 + 86400 * 40)])[0].allowed

    def test_lock_counts_messages_when_the_rule_does(self, store: Any) -> None:
        rule = LimitRule(windows=(Window("day", 2),), lock=True, by_messages=True)
        res = store.consume_limits([rule.request("a@x.org", 5, T0) for _ in range(3)])
        assert [r.newly_locked for r in res] == [False, False, True]
        assert store.locks()["a@x.org"] == (
            f"{LOCK_REASON}: 3 messages this day, over the per-day limit of 2"
        )

    def test_sendmail_lock_names_the_mail_and_the_window(self, store: Any) -> None:
        rule = LimitRule(windows=(Window("hour", 3),), lock=True, by_messages=False)
        assert charge_sent_mail(store, "a@x.org", rule, 2, T0, T0, "4QID1") is None
        message = charge_sent_mail(store, "a@x.org", rule, 2, T0, T0, "4QID2")
        assert message == (
            "mail 4QID2 submitted with sendmail: 4 recipients this hour, "
            "over the per-hour limit of 3"
        )
        assert store.locks() == {"a@x.org": message}

    def test_consume_limits_defer_mode_does_not_lock(self, store: Any) -> None:
        res = store.consume_limits([_req("a@x.org", 1, 1, lock=False) for _ in range(2)])
        assert [r.allowed for r in res] == [True, False]
        assert not res[1].newly_locked and not store.is_locked("a@x.org")

    def test_locked_account_refused_even_in_defer_mode(self, store: Any) -> None:
        # A lock (say, set by hand) stops sending whatever the account's on_exceed says.
        assert store.lock("a@x.org", "manual", T0)
        res = store.consume_limits([_req("a@x.org", 1, 10, lock=False)])
        assert res[0].locked and not res[0].allowed
        # The log follower counts mail already sent, lock or not.
        assert store.consume("a@x.org", 1, [Window("hour", 10)], T0, force=True).counts["hour"] == 1

    def test_batch_counts_in_order_across_accounts(self, store: Any) -> None:
        reqs = [_req(a, 1, 2, lock=False) for a in ("a@x.org", "b@x.org", "a@x.org", "a@x.org")]
        res = store.consume_limits(reqs)
        assert [r.allowed for r in res] == [True, True, True, False]
        assert [r.counts["hour"] for r in res] == [1, 1, 2, 2]
        assert res[3].exceeded == "hour"

    def test_lock_returns_true_once(self, store: Any) -> None:
        assert store.lock("a@x.org", "manual", T0)
        assert not store.lock("a@x.org", "again", T0)
        assert store.locks() == {"a@x.org": "manual"}

    def test_once(self, store: Any) -> None:
        assert store.once("notice:a", 10, T0)
        assert not store.once("notice:a", 10, T0 + 5)
        assert store.once("notice:a", 10, T0 + 11)
        assert store.once("notice:b", 10, T0 + 5)

    def test_stats(self, store: Any) -> None:
        store.add_stats("2024-05-01", "a@x.org", {"sent": 2, "rejected": 1})
        store.add_stats("2024-05-01", "a@x.org", {"sent": 3})
        store.add_stats("2024-05-02", "b@x.org", {"received": 1})
        store.set_stat("2024-05-01", "a@x.org", "queued", 7)
        store.set_stat("2024-05-01", "a@x.org", "queued", 4)
        rows = store.stats()
        assert [(r.day, r.account) for r in rows] == [
            ("2024-05-01", "a@x.org"),
            ("2024-05-02", "b@x.org"),
        ]
        assert rows[0].counters["sent"] == 5
        assert rows[0].counters["queued"] == 4
        assert rows[0].counters["rejected"] == 1
        assert set(STAT_COUNTERS) <= set(rows[0].counters)
        assert [r.account for r in store.stats(day="2024-05-02")] == ["b@x.org"]
        assert [r.day for r in store.stats(account="a@x.org")] == ["2024-05-01"]
        assert store.stats(day="2024-05-01", account="b@x.org") == []

    def test_positions(self, store: Any) -> None:
        assert store.get_position("mail.log") is None
        store.set_position("mail.log", "dev:ino", 10)
        store.set_position("mail.log", "dev:ino2", 20)
        assert store.get_position("mail.log") == ("dev:ino2", 20)

    def test_unknown_window_is_an_error(self, store: Any) -> None:
        import pytest

        with pytest.raises(ValueError, match="unknown limit window"):
            store.consume("a@x.org", 1, [Window("week", 1)], T0)
