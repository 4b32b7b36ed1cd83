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


def test_forks_bound_concurrency() -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, max

    def job(host: str) -> HostResult:
        with lock:
            running[0] += 1
            running[1] = max(running)
        with lock:
            running[0] -= 1
        return HostResult(host, Outcome.OK)

    run_parallel([f"h{i}" for i in range(20)], job, forks=3)
    assert running[1] <= 3


def test_recap_lines() -> None:
    results = [
        HostResult("mx1", Outcome.CHANGED, release=Release("r2", "d", "r1"), warnings=("w",)),
        HostResult(
            "mx10", Outcome.FAILED, message="verify: no banner\n  rolled back to release r1"
        ),
        HostResult("mx2", Outcome.OK),
    ]
    assert format_recap(results) == (
        "mx1   changed  release r2\n"
        "      warning: w\n"
        "mx10  failed  verify: no banner\n"
        "        rolled back to release r1\n"
        "mx2   ok\n"
        "ok=1, changed=1, failed=1, unreachable=0\n"
    )
    assert isinstance(ApplyError("h", "verify", "m"), HostError)
