"""The fleet runner: bounded parallel jobs, errors turned into per-host results, the recap."""

from __future__ import annotations

import threading

from compiler.connectors.transport import TransportError
from compiler.push.apply import ApplyError
from compiler.push.fleet import HostResult, Outcome, format_recap, recap_exit_code, run_parallel
from compiler.push.hostcall import HostError
from compiler.types import Release


def test_errors_become_results_and_order_is_kept() -> None:
    def job(host: str) -> HostResult:
        if host == "down":
            raise TransportError(host, "connection refused")
        if host == "bad":
            raise HostError(host, "observe", "python3: not found")
        if host == "bug":
            raise KeyError("oops")
        return HostResult(host, Outcome.OK)

    results = run_parallel(["ok1", "down", "bad", "bug", "ok2"], job, forks=2)
    assert [(r.host, r.outcome) for r in results] == [
        ("ok1", Outcome.OK),
        ("down", Outcome.UNREACHABLE),
        ("bad", Outcome.FAILED),
        ("bug", Outcome.FAILED),
        ("ok2", Outcome.OK),
    ]
    assert results[2].message == "observe: python3: not found"
    assert results[3].message == "internal error: KeyError('oops')"
    assert recap_exit_code(results) == 1
    assert recap_exit_code([results[0]]) == 0


class _SignalsExhausted(list[str]):
    """A host list that sets `done` (and wakes `cond`) once iterated to the end: by then the
    pool has been handed every job."""

    def __init__(self, hosts: list[str], cond: threading.Condition) -> None:
        super().__init__(hosts)
        self.cond = cond
        self.done = False

    def __iter__(self):  # type: ignore[override]
        yield from super().__iter__()
        with self.cond:
            self.done = True
            self.cond.notify_all()


def test_forks_bound_concurrency() -> None:
    """Every pool worker must be inside a job at once before any job returns, so the maximum
    in flight is exactly the number of workers: more than `forks` or fewer both fail."""
    bound = 3
    cond = threading.Condition()
    hosts = _SignalsExhausted([f"h{i}" for i in range(20)], cond)
    before = set(threading.enumerate())
    state = {"now": 0, "max": 0, "finished": 0}

    def workers() -> int:
        return sum(1 for t in threading.enumerate() if t not in before and t.is_alive())

    def everyone_in() -> bool:
        # No job finishes before all are submitted, so no worker is idle during submission
        # and the pool has started all its workers by the time `done` is set.
        if not hosts.done:
            return False
        return state["now"] >= min(workers(), len(hosts) - state["finished"])

    def job(host: str) -> HostResult:
        with cond:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            cond.notify_all()
            if not cond.wait_for(everyone_in, timeout=10):  # a hang guard, not a measurement
                raise AssertionError(f"{host}: slots never all occupied")
            state["now"] -= 1
            state["finished"] += 1
            cond.notify_all()
        return HostResult(host, Outcome.OK)

    results = run_parallel(hosts, job, forks=bound)
    assert [r.outcome for r in results] == [Outcome.OK] * 20, [r.message for r in results]
    assert state["max"] == bound


def test_recap_lines() -> None:
    results = [
        HostResult("mx1", Outcome.CHANGED, release=Release("r2", "d", "r1"), warnings=("w",)),
        HostResult(
            "mx10", Outcome.FAILED, message="verify: no banner\n  rolled back to release r1"
        ),
        HostResult("mx2", Outcome.OK),
    ]
    assert format_recap(results) == (
        "recap:\n"
        "mx1   changed  release r2\n"
        "      warning: w\n"
        "mx10  failed   verify: no banner\n"
        "        rolled back to release r1\n"
        "mx2   ok\n"
        "ok=1, changed=1, failed=1, unreachable=0\n"
    )
    assert isinstance(ApplyError("h", "verify", "m"), HostError)
