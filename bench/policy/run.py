"""Policy service benchmark: decisions/s, p50/p99 latency and exact limit counts.

Workload: `--senders` authenticated senders (10,000) sending `--per-sender` messages each,
plus 10 hot senders sending `--hot-sends` each, over a daily limit of `--limit`; one recipient
per message (END-OF-MESSAGE requests with recipient_count=1), shuffled, spread over N
persistent connections (1, 8, 32). The load generator runs in separate processes. A run checks
that every sender got exactly min(sent, limit) accepts (DUNNO).

Servers: the mailcfg agent (SQLite and, with --redis, a private redis-server), and side by
side, when available, Debian's postfwd2 (`rate()` on sasl_username) and policyd-rate-limit
(pip-installed into a venv in a temp dir, SQLite file). Ports: 22500-22599 on 127.0.0.1.

    python bench/policy/run.py [--conns 1,8,32] [--redis] [--postfwd] [--policyd]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOT = 10


def workload(senders: int, per_sender: int, hot_sends: int, seed: int = 7) -> list[str]:
    msgs = [f"user{i}@bench.test" for i in range(senders) for _ in range(per_sender)]
    msgs += [f"hot{i}@bench.test" for i in range(HOT) for _ in range(hot_sends)]
    random.Random(seed).shuffle(msgs)
    return msgs


def request(sender: str, n: int) -> bytes:
    return (
        "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nprotocol_name=ESMTP\n"
        f"client_address=192.0.2.{n % 250 + 1}\nclient_name=client.bench.test\n"
        f"helo_name=client.bench.test\nsasl_method=PLAIN\nsasl_username={sender}\n"
        f"sender={sender}\nrecipient=\nrecipient_count=1\ninstance={n:x}.1\nsize=1000\n\n"
    ).encode()


def connect(addr: str) -> socket.socket:
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr[5:])
    else:
        host, _, port = addr[4:].rpartition(":")
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _client(addr: str, conns: list[list[str]], out: mp.Queue) -> None:  # type: ignore[type-arg]
    """One process driving several connections, each one request at a time (as smtpd does),
    multiplexed with select so a process can hold many connections."""
    import selectors

    sel = selectors.DefaultSelector()
    state = []
    for i, msgs in enumerate(conns):
        s = connect(addr)
        s.setblocking(False)
        st = {"sock": s, "msgs": msgs, "i": 0, "buf": b"", "t": 0, "id": i}
        state.append(st)
        sel.register(s, selectors.EVENT_READ, st)
    lat: list[int] = []
    accepts: Counter[str] = Counter()
    answers: Counter[str] = Counter()

    def send(st: dict) -> None:  # type: ignore[type-arg]
        if st["i"] < len(st["msgs"]):
            st["t"] = time.perf_counter_ns()
            st["sock"].sendall(request(st["msgs"][st["i"]], st["i"] * 64 + st["id"]))

    t0 = time.perf_counter()
    for st in state:
        send(st)
    active = sum(1 for st in state if st["msgs"])
    while active:
        for key, _ in sel.select(timeout=30):
            st = key.data
            data = st["sock"].recv(65536)
            if not data:
                raise SystemExit("server closed the connection")
            st["buf"] += data
            while b"\n\n" in st["buf"]:
                reply, _, st["buf"] = st["buf"].partition(b"\n\n")
                lat.append(time.perf_counter_ns() - st["t"])
                action = reply.decode().removeprefix("action=").split(" ")[0]
                answers[action] += 1
                if action.upper() in ("DUNNO", "OK"):
                    accepts[st["msgs"][st["i"]]] += 1
                st["i"] += 1
                if st["i"] < len(st["msgs"]):
                    send(st)
                else:
                    active -= 1
    out.put((time.perf_counter() - t0, lat, dict(accepts), dict(answers)))


def run_load(addr: str, msgs: list[str], nconns: int, procs: int) -> dict:  # type: ignore[type-arg]
    per_conn: list[list[str]] = [msgs[i::nconns] for i in range(nconns)]
    procs = min(procs, nconns)
    groups = [per_conn[i::procs] for i in range(procs)]
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    ps = [mp.Process(target=_client, args=(addr, g, q)) for g in groups]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    results = [q.get(timeout=600) for _ in ps]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    lat = sorted(x for r in results for x in r[1])
    accepts: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    for r in results:
        accepts.update(r[2])
        answers.update(r[3])
    busy = max(r[0] for r in results)
    return {
        "decisions": len(lat),
        "per_s": len(lat) / busy,
        "p50_ms": lat[len(lat) // 2] / 1e6,
        "p99_ms": lat[int(len(lat) * 0.99)] / 1e6,
        "wall_s": wall,
        "accepts": accepts,
        "answers": dict(answers),
    }


def check_exact(msgs: list[str], accepts: Counter[str], limit: int) -> int:
    """Number of senders whose accepts differ from min(sent, limit)."""
    sent = Counter(msgs)
    return sum(1 for s, n in sent.items() if accepts.get(s, 0) != min(n, limit))


def wait_socket(addr: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            connect(addr).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server not listening on {addr}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- servers ------------------------------------------------------------------------------


def agent_config(tmp: Path, state: str, limit: int) -> Path:
    cfg = {
        "host": "bench",
        "hostname": "bench.example.com",
        "listen": f"unix:{tmp}/agent.sock",
        "state": state,
        "local_domains": ["example.com"],
        "global_filter_reject_text": "rejected",
        "whitelist_reject_text": "not whitelisted",
        "spam": {"spf": False},
        # Daily only, so a run crossing an hour boundary still has exact expected counts.
        "default_limits": {"per_day": limit, "on_exceed": "lock"},
        "postmaster": "postmaster@example.com",
        "notify_smtp": "127.0.0.1:22599",  # nothing listens: alert mails fail fast (logged)
    }
    path = tmp / "agent.json"
    path.write_text(json.dumps(cfg))
    return path


def start_agent(tmp: Path, state: str, limit: int) -> tuple[subprocess.Popen[bytes], str]:
    cfg = agent_config(tmp, state, limit)
    addr = f"unix:{tmp}/agent.sock"
    log = open(tmp / "agent.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--config", str(cfg), "--listen", addr],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_socket(addr, proc)
    return proc, addr


def start_redis(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_socket(f"tcp:127.0.0.1:{port}", proc)
    return proc


def start_postfwd(tmp: Path, port: int, limit: int) -> tuple[subprocess.Popen[bytes], str]:
    rules = tmp / "postfwd.cf"
    rules.write_text(
        "id=RATE; protocol_state==END-OF-MESSAGE; sasl_username=~.\n"
        f"  action=rate(sasl_username/{limit}/86400/DEFER 4.7.1 rate exceeded)\n"
    )
    proc = subprocess.Popen(
        [
            "postfwd2",
            "--nodaemon",
            "-f",
            str(rules),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "--pidfile",
            str(tmp / "postfwd.pid"),
            "-u",
            "nobody",
            "-g",
            "nogroup",
            "--cache_socket",
            f"unix:{tmp}/postfwd.cache",
            "-c",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "postfwd.log", "wb"),  # noqa: SIM115
    )
    addr = f"tcp:127.0.0.1:{port}"
    wait_socket(addr, proc)
    return proc, addr


def start_policyd(tmp: Path, port: int, limit: int) -> tuple[subprocess.Popen[bytes], str]:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "policyd-rate-limit"], check=True)
    conf = tmp / "policyd.yaml"
    conf.write_text(
        "debug: False\nuser: root\ngroup: root\n"
        f"pidfile: {tmp}/policyd.pid\n"
        "backend: 0\n"
        f'sqlite_config:\n  database: "{tmp}/policyd.sqlite3"\n'
        f'SOCKET: ["127.0.0.1", {port}]\nsocket_permission: 0666\n'
        f"limits:\n  - [{limit}, 86400]\n"
        "limit_by_sasl: True\nlimit_by_sender: False\nlimit_by_ip: False\n"
        "limited_networks: []\nlimited_netword: []\n"
        "count_mode: 1\n"
        'success_action: "dunno"\nfail_action: "defer_if_permit Rate limit reach, retry later"\n'
        'db_error_action: "dunno"\nreport: False\n'
    )
    proc = subprocess.Popen(
        [str(venv / "bin/policyd-rate-limit"), "--file", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "policyd.log", "wb"),  # noqa: SIM115
    )
    addr = f"tcp:127.0.0.1:{port}"
    wait_socket(addr, proc, timeout=60)
    return proc, addr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", default="1,8,32")
    ap.add_argument("--senders", type=int, default=10_000)
    ap.add_argument("--per-sender", type=int, default=5)
    ap.add_argument("--hot-sends", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--redis", action="store_true")
    ap.add_argument("--postfwd", action="store_true")
    ap.add_argument("--policyd", action="store_true")
    ap.add_argument(
        "--others-max",
        type=int,
        default=20_000,
        help="decisions per run for the (slower) comparison servers",
    )
    args = ap.parse_args()
    conns = [int(c) for c in args.conns.split(",")]
    msgs = workload(args.senders, args.per_sender, args.hot_sends)
    print(f"workload: {len(msgs)} decisions, {args.senders}+{HOT} senders, limit {args.limit}/day")
    rows = []

    def bench(name: str, start, subset: list[str]) -> None:  # type: ignore[no-untyped-def]
        for n in conns:
            tmp = Path(tempfile.mkdtemp(prefix="mailcfg-bench-"))
            procs: list[subprocess.Popen[bytes]] = []
            try:
                proc, addr, extra = start(tmp)
                procs = [proc, *extra]
                r = run_load(addr, subset, n, args.procs)
                bad = check_exact(subset, r["accepts"], args.limit)
                rows.append((name, n, r, bad))
                print(
                    f"{name:22} conns={n:3} {r['per_s']:9.0f}/s p50={r['p50_ms']:.3f}ms "
                    f"p99={r['p99_ms']:.3f}ms exact={'yes' if bad == 0 else f'NO ({bad} wrong)'} "
                    f"answers={r['answers']}",
                    flush=True,
                )
            finally:
                for p in procs:
                    stop(p)
                shutil.rmtree(tmp, ignore_errors=True)

    def agent_sqlite(tmp: Path):  # type: ignore[no-untyped-def]
        p, a = start_agent(tmp, f"sqlite:///{tmp}/state.db", args.limit)
        return p, a, []

    def agent_redis(tmp: Path):  # type: ignore[no-untyped-def]
        rp = start_redis(tmp, 22510)
        p, a = start_agent(tmp, "redis://127.0.0.1:22510/0", args.limit)
        return p, a, [rp]

    bench("mailcfg-agent sqlite", agent_sqlite, msgs)
    if args.redis:
        bench("mailcfg-agent redis", agent_redis, msgs)
    small = workload(args.senders // 5, args.per_sender, args.hot_sends // 5)[: args.others_max]
    if args.postfwd:
        bench("postfwd2 rate()", lambda t: (*start_postfwd(t, 22520, args.limit), []), small)
    if args.policyd:
        bench("policyd-rate-limit", lambda t: (*start_policyd(t, 22530, args.limit), []), small)
    return 0 if all(bad == 0 for name, _, _, bad in rows if name.startswith("mailcfg")) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
