"""Policy service benchmark: decisions/s, p50/p99 latency, server CPU and exact limit counts.

Workload: `--senders` authenticated senders (10,000) sending `--per-sender` messages each,
plus 10 hot senders sending `--hot-sends` each, over a daily limit of `--limit`; one recipient
per message (END-OF-MESSAGE requests with recipient_count=1), shuffled, spread over N
persistent connections (1, 8, 32). Like smtpd, a connection has one request outstanding at a
time. The load generator runs in separate processes, with every request encoded before the
clock starts. A run checks that every sender got exactly min(sent, limit) accepts and, for
the SQLite agents, that the store (read after the server stopped: the usage journal's newest
row of an account, else its usage row) holds exactly each sender's accepts.

Servers, each started fresh (empty state) for every connection count:
- the mailcfg agent with its SQLite backend and with Redis (a private redis-server);
- Debian's postfwd2, `rate(sasl_username/LIMIT/86400/...)` (it daemonizes: started with a
  pidfile in the run's temp dir and stopped by that PID);
- policyd-rate-limit from PyPI, pip-installed into a venv in the temp dir, SQLite file. It
  counts only at `protocol_state=DATA` (its `count_mode: 1`), so its requests say DATA.
A server that fails to start or to answer is reported as failed; the others still run.

The result is a Markdown table on stdout (progress lines go to stderr). `server CPU` is the
user+system CPU time of the server's process tree per decision (not Redis'): on a shared
machine it is steadier than the throughput; `CPU vs agent` divides it by the SQLite agent's at
the same connection count; `RSS` is the server tree's memory at the end of the run (the sum
of its processes' proportional set sizes: a pre-forking server's shared pages count once).
`--repeat N` runs every server N times, interleaved (A, B, C, A, B, C…) so they meet the same
machine load, and shows the median run; `--baseline SRC` adds the SQLite agent of another
source tree (say `git archive` of an older commit) to the same rounds. Ports: 22500-22599 on
127.0.0.1.

    python bench/policy/run.py [--conns 1,8,32] [--repeat 3] [--baseline SRC]
        [--servers agent-sqlite,agent-redis,floor,postfwd,policyd]

`floor` is `floor.py`: the least a durable per-sender limit server does per decision (uvloop,
counts in memory, one WAL commit per event-loop pass before the replies, nothing else), so the
table shows how much of the agent's CPU is its own work.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOT = 10
PORT_REDIS, PORT_POSTFWD, PORT_POLICYD, PORT_SMTP = 22510, 22520, 22530, 22599


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- workload and load generator --------------------------------------------------------------


def workload(senders: int, per_sender: int, hot_sends: int, seed: int = 7) -> list[str]:
    msgs = [f"user{i}@bench.test" for i in range(senders) for _ in range(per_sender)]
    msgs += [f"hot{i}@bench.test" for i in range(HOT) for _ in range(hot_sends)]
    random.Random(seed).shuffle(msgs)
    return msgs


def request(sender: str, n: int, state: str = "END-OF-MESSAGE") -> bytes:
    return (
        f"request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n"
        f"client_address=192.0.2.{n % 250 + 1}\nclient_name=client.bench.test\n"
        f"reverse_client_name=client.bench.test\nhelo_name=client.bench.test\n"
        f"sasl_method=PLAIN\nsasl_username={sender}\nsasl_sender=\n"
        f"sender={sender}\nrecipient=\nrecipient_count=1\nqueue_id=\n"
        f"instance={n:x}.{n % 7}\nsize=1000\netrn_domain=\nstress=\n"
        "ccert_subject=\nccert_issuer=\nccert_fingerprint=\nencryption_protocol=TLSv1.3\n"
        "encryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\n"
        "policy_context=\nserver_address=192.0.2.254\nserver_port=587\n\n"
    ).encode()


def connect(addr: str) -> socket.socket:
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr[5:])
    else:
        host, _, port = addr[4:].rpartition(":")
        s = socket.create_connection((host, int(port)), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


@dataclass
class _Conn:
    sock: socket.socket
    senders: list[str]
    reqs: list[bytes]
    i: int = 0
    buf: bytes = b""
    t: int = 0


def _client(
    addr: str,
    work: list[tuple[list[str], list[bytes]]],
    barrier: Any,
    out: Any,
) -> None:
    """One process driving several connections, each one request at a time (as smtpd does),
    multiplexed with a selector. Sends `(elapsed_s, latencies_ns, accepts, answers)` or
    `("error", text)` to `out`."""
    try:
        conns = [_Conn(connect(addr), senders, reqs) for senders, reqs in work]
    except OSError as exc:
        barrier.abort()
        out.put(("error", f"connect {addr}: {exc}"))
        return
    sel = selectors.DefaultSelector()
    for c in conns:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    lat: list[int] = []
    accepts: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    clock = time.perf_counter_ns
    try:
        barrier.wait(60)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = ru.ru_utime + ru.ru_stime
        t0 = time.perf_counter()
        active = 0
        for c in conns:
            if c.reqs:
                c.t = clock()
                c.sock.send(c.reqs[0])
                active += 1
        while active:
            events = sel.select(timeout=30)
            if not events:
                raise TimeoutError("no reply within 30 s")
            for key, _ in events:
                c = key.data
                data = c.sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                buf = c.buf + data if c.buf else data
                end = buf.find(b"\n\n")
                while end >= 0:
                    lat.append(clock() - c.t)
                    action = buf[7:end].split(b" ", 1)[0].decode().upper()  # after "action="
                    answers[action] += 1
                    if action in ("DUNNO", "OK"):
                        accepts[c.senders[c.i]] += 1
                    c.i += 1
                    buf = buf[end + 2 :]
                    if c.i < len(c.reqs):
                        c.t = clock()
                        c.sock.send(c.reqs[c.i])
                    else:
                        active -= 1
                    end = buf.find(b"\n\n")
                c.buf = buf
        elapsed = time.perf_counter() - t0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out.put((elapsed, lat, dict(accepts), dict(answers), ru.ru_utime + ru.ru_stime - cpu0))
    except Exception as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for c in conns:
            c.sock.close()


@dataclass
class LoadResult:
    decisions: int
    per_s: float
    p50_ms: float
    p99_ms: float
    accepts: Counter[str]
    answers: dict[str, int]
    cpu_us: float | None = None  # server CPU per decision
    client_cpu_us: float = 0.0  # load generator CPU per decision
    rss_kib: int = 0  # memory of the server's process tree at the end (sum of PSS)
    stored: dict[str, int] | None = None  # the day count per account in the agent's store


def run_load(
    addr: str,
    msgs: list[str],
    nconns: int,
    procs: int,
    state: str,
    cpu: Callable[[], float],
    rss: Callable[[], int] = lambda: 0,
) -> LoadResult:
    per_conn = [msgs[i::nconns] for i in range(nconns)]
    reqs = [
        [request(s, j * nconns + i, state) for j, s in enumerate(c)] for i, c in enumerate(per_conn)
    ]
    procs = min(procs, nconns)
    groups = [list(zip(per_conn[i::procs], reqs[i::procs], strict=True)) for i in range(procs)]
    ctx = mp.get_context("fork")  # children inherit the encoded requests without pickling
    q = ctx.Queue()
    barrier = ctx.Barrier(procs + 1)
    ps = [ctx.Process(target=_client, args=(addr, g, barrier, q)) for g in groups]
    for p in ps:
        p.start()
    with contextlib.suppress(Exception):  # a client could not connect: its error is queued
        barrier.wait(60)
    cpu0 = cpu()
    results = [q.get(timeout=900) for _ in ps]
    cpu1 = cpu()
    rss_kib = rss()
    for p in ps:
        p.join()
    errors = [r[1] for r in results if r[0] == "error"]
    if errors:
        raise RuntimeError("; ".join(sorted(set(errors))))
    lat = sorted(x for r in results for x in r[1])
    accepts: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    for r in results:
        accepts.update(r[2])
        answers.update(r[3])
    busy = max(r[0] for r in results)
    return LoadResult(
        decisions=len(lat),
        per_s=len(lat) / busy,
        p50_ms=lat[len(lat) // 2] / 1e6,
        p99_ms=lat[int(len(lat) * 0.99)] / 1e6,
        accepts=accepts,
        answers=dict(answers),
        cpu_us=(cpu1 - cpu0) / len(lat) * 1e6 if cpu0 >= 0 else None,
        client_cpu_us=sum(r[4] for r in results) / len(lat) * 1e6,
        rss_kib=rss_kib,
    )


def check_exact(msgs: list[str], res: LoadResult, limit: int) -> int:
    """Number of senders whose accepts differ from min(sent, limit), or (where the server's
    store was read after it stopped) whose stored count differs from their accepts."""
    sent = Counter(msgs)
    stored = res.stored
    return sum(
        1
        for s, n in sent.items()
        if res.accepts.get(s, 0) != min(n, limit)
        or (stored is not None and stored.get(s, 0) != res.accepts.get(s, 0))
    )


def sqlite_day_counts(path: Path) -> dict[str, int]:
    """The day count of each account in an agent's SQLite store: its newest `usage_log` row
    (the usage journal, if not folded yet), else its `usage` row. An older agent's store has
    no journal."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        counts = dict(db.execute("SELECT account, day_n FROM usage"))
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'usage_log'").fetchone():
            newest = "SELECT max(rowid), account, day_n FROM usage_log GROUP BY account"
            counts.update((a, n) for _, a, n in db.execute(newest))
    return counts


# -- process handling -------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                raw = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parents[int(d)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parents.items() if pp == p]
    return out


def tree_rss(pid: int) -> int:
    """Memory (KiB) of `pid` and its live descendants at the end of a run: the sum of their
    proportional set sizes, so that pages a pre-forking server's children share count once."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user+system, plus reaped children's) of `pid` and its live descendants;
    -1 if `pid` is gone."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2 :].split()
        parents[int(d)] = int(f[1])
        times[int(d)] = sum(int(x) for x in f[11:15]) / _TICK
    if pid not in times:
        return -1.0
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times[p]
        todo += [c for c, pp in parents.items() if pp == p]
    return total


def wait_listening(addr: str, alive: Callable[[], str | None], timeout: float = 30) -> None:
    """Until `addr` accepts a connection; `alive()` returns why the server died, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        why = alive()
        if why:
            raise RuntimeError(why)
        try:
            connect(addr).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {addr} after {timeout:.0f} s")


def stop_pid(pid: int, timeout: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def popen_alive(proc: subprocess.Popen[bytes], logfile: Path) -> Callable[[], str | None]:
    def alive() -> str | None:
        if proc.poll() is None:
            return None
        return f"exited with {proc.returncode}: {tail(logfile)}"

    return alive


def tail(path: Path, n: int = 300) -> str:
    """What a failed server said: its error lines if it printed usage text, else the end."""
    text = path.read_text(errors="replace") if path.exists() else ""
    errors = [ln for ln in text.splitlines() if any(w in ln for w in ("rror", "nknown", "annot"))]
    return (" | ".join(errors) if errors else text)[-n:].strip()


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Running:
    addr: str
    pid: int  # the server whose CPU is measured
    stops: list[Callable[[], None]] = field(default_factory=list)


Starter = Callable[[Path, int], Running]


@dataclass(frozen=True)
class Server:
    name: str
    start: Starter
    state: str = "END-OF-MESSAGE"  # protocol_state of its requests
    full: bool = True  # the whole workload, or the smaller one for slow peers
    # The stored count per account, read from the run's temp dir after the server stopped.
    stored: Callable[[Path], dict[str, int]] | None = None


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
        # Nothing listens there: the 10 lock alert mails fail fast (and are logged).
        "notify_smtp": f"127.0.0.1:{PORT_SMTP}",
    }
    path = tmp / "agent.json"
    path.write_text(json.dumps(cfg))
    return path


def start_server(argv: list[str], addr: str, logfile: Path, cwd: Path | None = None) -> Running:
    """Start a policy server in the foreground (output appended to `logfile`), wait until it
    listens on `addr`, and stop it by PID if it never does."""
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    run = Running(addr, proc.pid, [lambda: stop_pid(proc.pid)])
    try:
        wait_listening(addr, popen_alive(proc, logfile))
    except Exception:
        stop_pid(proc.pid)
        raise
    return run


def start_agent(tmp: Path, limit: int, state: str, src: Path = ROOT) -> Running:
    """The agent of the source tree `src` (this checkout unless a baseline is asked for)."""
    cfg = agent_config(tmp, state, limit)
    addr = f"unix:{tmp}/agent.sock"
    argv = [sys.executable, "-m", "runtime", "serve", "--config", str(cfg), "--listen", addr]
    return start_server(argv, addr, tmp / "agent.log", cwd=src)


def start_agent_sqlite(tmp: Path, limit: int) -> Running:
    return start_agent(tmp, limit, f"sqlite:///{tmp}/state.db")


def start_agent_redis(tmp: Path, limit: int) -> Running:
    logfile = tmp / "redis.log"
    with open(logfile, "wb") as out:
        rproc = subprocess.Popen(
            [
                *("redis-server", "--port", str(PORT_REDIS), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(tmp)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(f"tcp:127.0.0.1:{PORT_REDIS}", popen_alive(rproc, logfile))
        run = start_agent(tmp, limit, f"redis://127.0.0.1:{PORT_REDIS}/0")
    except Exception:
        stop_pid(rproc.pid)
        raise
    run.stops.append(lambda: stop_pid(rproc.pid))
    return run


def start_floor(tmp: Path, limit: int) -> Running:
    sock = tmp / "floor.sock"
    argv = [sys.executable, str(ROOT / "bench/policy/floor.py"), str(sock), str(limit)]
    return start_server([*argv, str(tmp / "floor.db")], f"unix:{sock}", tmp / "floor.log")


def find_postfwd() -> str:
    for name in ("postfwd3", "postfwd2"):
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if path:
            return path
    raise RuntimeError("postfwd2/postfwd3 not found (Debian package postfwd)")


def start_postfwd(tmp: Path, limit: int) -> Running:
    exe = find_postfwd()
    tmp.chmod(0o777)  # it drops to nobody and writes its pidfile and cache socket here
    rules = tmp / "postfwd.cf"
    rules.write_text(
        "id=RATE; protocol_state==END-OF-MESSAGE; sasl_username=~.\n"
        f"  action=rate(sasl_username/{limit}/86400/450 4.7.1 sending rate exceeded)\n"
    )
    rules.chmod(0o644)
    pidfile = tmp / "postfwd.pid"
    addr = f"tcp:127.0.0.1:{PORT_POSTFWD}"
    logfile = tmp / "postfwd.log"
    cmd = [exe, "-f", str(rules), "--server_socket", addr, "--cache_socket"]
    cmd += [f"unix::{tmp}/postfwd-cache.sock", "--pidfile", str(pidfile)]
    # -c 0: no request cache (every request is a new message); enough children for 32 conns.
    cmd += ["-u", "nobody", "-g", "nogroup", "-c", "0", "-n", "--perfmon"]
    cmd += ["--min_servers", "40", "--max_servers", "80"]
    with open(logfile, "wb") as out:
        # postfwd2 has no foreground mode: the command returns once the master daemonized.
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"{exe} exited with {res.returncode}: {tail(logfile)}")
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{exe} wrote no pidfile: {tail(logfile)}")
        time.sleep(0.05)
    pid = int(pidfile.read_text().strip())
    run = Running(addr, pid, [lambda: stop_pid(pid)])

    def alive() -> str | None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"{exe} (pid {pid}) died: {tail(logfile)}"
        return None

    try:
        wait_listening(addr, alive)
    except Exception:
        stop_pid(pid)
        raise
    return run


def policyd_venv(shared: Path) -> Path:
    """policyd-rate-limit pip-installed into a venv, once per bench run."""
    venv = shared / "policyd-venv"
    if (venv / "bin/policyd-rate-limit").exists():
        return venv
    logfile = shared / "policyd-install.log"
    with open(logfile, "wb") as out:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out
        )
        pip = [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check"]
        res = subprocess.run([*pip, "policyd-rate-limit"], stdout=out, stderr=out, timeout=600)
    if res.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise RuntimeError(f"pip install policyd-rate-limit failed: {tail(logfile)}")
    return venv


def start_policyd(tmp: Path, limit: int) -> Running:
    venv = policyd_venv(tmp.parent)
    logfile = tmp / "policyd.log"
    conf = tmp / "policyd.yaml"
    conf.write_text(
        "debug: False\nuser: root\ngroup: root\n"
        f'pidfile: "{tmp}/policyd.pid"\n'
        "backend: 0\n"
        f'sqlite_config:\n  database: "{tmp}/policyd.sqlite3"\n'
        f'SOCKET: ["127.0.0.1", {PORT_POLICYD}]\nsocket_permission: 0666\n'
        f"limits:\n  - [{limit}, 86400]\nlimits_by_id: {{}}\nsql_limits_by_id: ''\n"
        "limit_by_sasl: True\nlimit_by_sender: False\nlimit_by_ip: False\n"
        "limited_networks: []\n"
        "count_mode: 1\n"
        'success_action: "dunno"\nfail_action: "defer_if_permit Rate limit reach, retry later"\n'
        'db_error_action: "dunno"\nreport: False\ndelay_to_close: 300\n'
    )
    addr = f"tcp:127.0.0.1:{PORT_POLICYD}"
    return start_server([str(venv / "bin/policyd-rate-limit"), "--file", str(conf)], addr, logfile)


SERVERS = {
    "agent-sqlite": Server(
        "mailcfg agent, SQLite",
        start_agent_sqlite,
        stored=lambda tmp: sqlite_day_counts(tmp / "state.db"),
    ),
    "agent-redis": Server("mailcfg agent, Redis", start_agent_redis),
    "floor": Server("floor (floor.py)", start_floor),
    "postfwd": Server("postfwd2 rate()", start_postfwd, full=False),
    # count_mode 1 counts recipient_count at DATA and ignores every other state.
    "policyd": Server("policyd-rate-limit (SQLite)", start_policyd, state="DATA", full=False),
}


# -- main -------------------------------------------------------------------------------------


@dataclass
class Row:
    server: str
    conns: int
    result: LoadResult | None = None  # the median run by decisions/s
    wrong: int = 0  # senders with wrong counts, worst run
    error: str = ""
    rates: list[float] = field(default_factory=list)  # decisions/s of every run
    cpus: list[float] = field(default_factory=list)  # server CPU µs/decision of every run


@contextlib.contextmanager
def temp_dir(parent: Path | None = None) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="mailcfg-bench-policy-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_once(
    srv: Server, msgs: list[str], n: int, args: argparse.Namespace, shared: Path
) -> LoadResult:
    """One run of a fresh server (own temp dir under `shared`) at `n` connections."""
    with temp_dir(shared) as tmp:
        run: Running | None = None
        try:
            run = srv.start(tmp, args.limit)
            cpu = functools.partial(tree_cpu, run.pid)
            rss = functools.partial(tree_rss, run.pid)
            res = run_load(run.addr, msgs, n, args.procs, srv.state, cpu, rss)
        finally:
            if run is not None:
                for stop in run.stops:
                    stop()
        if srv.stored is not None:
            res.stored = srv.stored(tmp)
        return res


def bench_servers(
    servers: list[Server], work: dict[str, list[str]], conns: list[int], args: argparse.Namespace,
    shared: Path,
) -> list[Row]:  # fmt: skip
    """Every server at each connection count, `args.repeat` times, interleaved (server A, B,
    C, then A, B, C again) so that they share the machine's load alike."""
    rows = []
    for n in conns:
        todo = {srv.name: Row(srv.name, n) for srv in servers}
        results: dict[str, list[LoadResult]] = {srv.name: [] for srv in servers}
        for _ in range(args.repeat):
            for srv in servers:
                row = todo[srv.name]
                if row.error:
                    continue
                msgs = work[srv.name]
                try:
                    res = run_once(srv, msgs, n, args, shared)
                except Exception as exc:
                    row.error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                    continue
                results[srv.name].append(res)
                row.wrong = max(row.wrong, check_exact(msgs, res, args.limit))
        for srv in servers:
            row, got = todo[srv.name], results[srv.name]
            if got and not row.error:
                got.sort(key=lambda r: r.per_s)
                row.result = got[len(got) // 2]
                row.rates = [r.per_s for r in got]
                row.cpus = sorted(r.cpu_us for r in got if r.cpu_us is not None)
            rows.append(row)
            log(format_line(row))
    return rows


def format_line(row: Row) -> str:
    if row.result is None:
        return f"{row.server:30} conns={row.conns:3} FAILED {row.error}"
    r = row.result
    cpu = f"{r.cpu_us:.0f}us" if r.cpu_us is not None else "?"
    exact = "yes" if row.wrong == 0 else f"NO ({row.wrong} senders wrong)"
    return (
        f"{row.server:30} conns={row.conns:3} {r.per_s:8.0f}/s p50={r.p50_ms:.3f}ms "
        f"p99={r.p99_ms:.3f}ms cpu/decision={cpu} (client {r.client_cpu_us:.0f}us) "
        f"exact={exact} answers={r.answers}"
    )


def mid_cpu(row: Row) -> float | None:
    """The median of a row's server CPU per decision over its runs."""
    cpus = row.cpus
    return cpus[len(cpus) // 2] if cpus else None


def format_table(rows: list[Row], sizes: dict[str, int]) -> str:
    """The Markdown table: decisions/s and latencies of the median run by decisions/s, the
    median server CPU per decision over the runs (each run's in brackets), and `CPU vs agent`,
    that median over the SQLite agent's at the same connection count."""
    out = [
        "| server | conns | decisions | decisions/s | p50 ms | p99 ms | server CPU µs/decision "
        "(runs) | CPU vs agent | RSS (PSS) | exact counts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ref = {
        r.conns: mid_cpu(r)
        for r in rows
        if r.server == SERVERS["agent-sqlite"].name and r.result is not None
    }
    for row in rows:
        if row.result is None:
            out.append(
                f"| {row.server} | {row.conns} | {sizes[row.server]} | failed: {row.error} "
                "| | | | | | |"
            )
            continue
        r = row.result
        mid = mid_cpu(row)
        cpu = f"{mid:.0f}" if mid is not None else "?"
        if len(row.cpus) > 1:
            cpu += " (" + " / ".join(f"{c:.0f}" for c in row.cpus) + ")"
        base = ref.get(row.conns)
        ratio = f"{mid / base:.1f}x" if base and mid is not None else ""
        exact = "yes" if row.wrong == 0 else f"**no** ({row.wrong} senders wrong)"
        rate = f"{r.per_s:,.0f}"
        if len(row.rates) > 1:
            rate += f" ({min(row.rates):,.0f} to {max(row.rates):,.0f})"
        out.append(
            f"| {row.server} | {row.conns} | {r.decisions} | {rate} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {cpu} | {ratio} | {r.rss_kib / 1024:.0f} MiB | {exact} |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--conns", default="1,8,32")
    ap.add_argument("--servers", default=",".join(SERVERS), help=f"of {', '.join(SERVERS)}")
    ap.add_argument("--senders", type=int, default=10_000)
    ap.add_argument("--per-sender", type=int, default=5)
    ap.add_argument("--hot-sends", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per server and connection count; the table shows the median run by "
        "decisions/s (and the range)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another agent source tree (say `git archive` of an older commit): its SQLite "
        "agent runs in the same rounds",
    )
    ap.add_argument(
        "--peer-senders",
        type=int,
        default=2_000,
        help="senders in the (smaller) workload of the slower comparison servers",
    )
    args = ap.parse_args()
    conns = [int(c) for c in args.conns.split(",")]
    unknown = [s for s in args.servers.split(",") if s not in SERVERS]
    if unknown:
        ap.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    full = workload(args.senders, args.per_sender, args.hot_sends)
    hot_small = args.hot_sends * args.peer_senders // args.senders
    small = workload(args.peer_senders, args.per_sender, hot_small)
    log(
        f"workload: {len(full)} decisions ({args.senders}+{HOT} senders), peers {len(small)} "
        f"({args.peer_senders}+{HOT}); limit {args.limit}/day; {os.cpu_count()} CPUs"
    )
    servers = [SERVERS[key] for key in args.servers.split(",")]
    if args.baseline:
        src = args.baseline.resolve()
        servers.insert(
            1,
            Server(
                "mailcfg agent (baseline), SQLite",
                lambda tmp, limit: start_agent(tmp, limit, f"sqlite:///{tmp}/state.db", src),
                stored=SERVERS["agent-sqlite"].stored,
            ),
        )
    work = {srv.name: full if srv.full else small for srv in servers}
    sizes = {name: len(msgs) for name, msgs in work.items()}
    log(f"load average {os.getloadavg()[0]:.1f}")
    with temp_dir() as shared:
        shared.chmod(0o711)  # postfwd runs as nobody in a directory below
        rows = bench_servers(servers, work, conns, args, shared)
    log(f"load average {os.getloadavg()[0]:.1f}")
    print(format_table(rows, sizes))
    ours = [r for r in rows if r.server.startswith("mailcfg")]
    return 0 if all(r.result is not None and r.wrong == 0 for r in ours) else 1


if __name__ == "__main__":
    sys.exit(main())
