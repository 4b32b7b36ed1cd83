"""The policy service's own CPU per decision, in-process: no sockets, no client processes.

`bench/policy/run.py`'s workload and agent config, a real SQLite store (in a temp dir) and
the real `PolicyService` on uvloop, with `--conns` fake connections whose transports keep
what is written. Each round, `--batch` of the connections (turn by turn) deliver one request
each through `PolicyConnection.data_received`, then one event-loop pass runs the batch's
flush (one commit), as in the server at 8 connections (about 5 decisions per commit). What
it measures is the Python and SQLite work of a decision without the kernel's socket work and
wake-ups, steadier than the real server on a shared machine; `--profile` prints cProfile's
top functions instead of timing. Replies are checked against the workload's expected counts.
`--no-sql` puts a store that allows everything and touches no file in the SQLite store's
place: what is left is the Python of parsing, deciding and answering (every reply DUNNO).

    python bench/policy/inproc.py [--runs 5] [--batch 5] [--profile] [--no-sql]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "policy"))

import run as bench  # noqa: E402

from runtime.config import load_agent_config, prepare_policy  # noqa: E402
from runtime.policy.connection import PolicyConnection, new_event_loop  # noqa: E402
from runtime.policy.service import PolicyService  # noqa: E402
from runtime.state.limits import LimitRequest, LimitResult  # noqa: E402
from runtime.state.sqlite import SqliteStore  # noqa: E402


class SinkTransport:
    """What `PolicyConnection` uses of a transport; replies are kept for the count check."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return None

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        pass

    abort = close


class AllowAll:
    """`--no-sql`: every request allowed, nothing stored (one result made per request, as
    the SQLite store makes one)."""

    def consume_limits(self, requests: list[LimitRequest]) -> list[LimitResult]:
        return [LimitResult(True, False, None, False, {"day": 1}) for _ in requests]

    def close(self) -> None:
        pass


async def drive(
    service: PolicyService, msgs: list[str], conns: int, batch: int, expected: dict[bytes, int]
) -> float:
    """Feed the workload; return the CPU seconds of the process meanwhile."""
    links = [PolicyConnection(service) for _ in range(conns)]
    sinks = [SinkTransport() for _ in range(conns)]
    for link, sink in zip(links, sinks, strict=True):
        link.connection_made(sink)  # type: ignore[arg-type]
    reqs = [bench.request(s, i) for i, s in enumerate(msgs)]
    cpu0 = time.process_time()
    turn = 0
    for start in range(0, len(reqs), batch):
        for req in reqs[start : start + batch]:
            links[turn].data_received(req)
            turn = (turn + 1) % conns
        await asyncio.sleep(0)  # the flush the batch scheduled runs in this pass
    await asyncio.sleep(0)
    cpu = time.process_time() - cpu0
    replies = Counter(r.split(b" ", 1)[0].rstrip(b"\n") for s in sinks for r in s.out)
    if sum(len(s.out) for s in sinks) != len(msgs) or dict(replies) != expected:
        raise SystemExit(f"wrong replies: {dict(replies)}")
    for link in links:
        link.connection_lost(None)
    return cpu


def run_once(args: argparse.Namespace, tmp: Path, profile: cProfile.Profile | None) -> float:
    msgs = bench.workload(10_000, 5, 1000)
    cfg_path = bench.agent_config(tmp, f"sqlite:///{tmp}/state.db", 100)
    config = load_agent_config(cfg_path)
    # The lock alerts go nowhere: the bench's notify_smtp has no listener.
    store = AllowAll() if args.no_sql else SqliteStore(tmp / "state.db")
    expected = {b"action=DUNNO": 51_000, b"action=DEFER": 9_000}
    if args.no_sql:
        expected = {b"action=DUNNO": len(msgs)}
    service = PolicyService(
        prepare_policy(config),
        store,  # type: ignore[arg-type]
        send_alert=lambda *a: None,
        send_notice=lambda *a: None,
    )
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            if profile is not None:
                profile.enable()
            cpu = runner.run(drive(service, msgs, args.conns, args.batch, expected))
            if profile is not None:
                profile.disable()
    finally:
        store.close()
    return cpu / len(msgs) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-sql", action="store_true", help="a store that allows everything")
    args = ap.parse_args()
    if not 1 <= args.batch <= args.conns:
        # One request outstanding per connection, as smtpd sends them (and as the reply
        # check counts them: one write per request).
        ap.error("--batch must be between 1 and --conns")
    profile = cProfile.Profile() if args.profile else None
    cpus = []
    for _ in range(1 if profile else args.runs):
        with bench.temp_dir() as tmp:
            cpus.append(run_once(args, tmp, profile))
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    cpus.sort()
    print(json.dumps({"cpu_us_per_decision": [round(c, 2) for c in cpus]}))
    print(f"median {cpus[len(cpus) // 2]:.2f} us per decision (runs {len(cpus)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
