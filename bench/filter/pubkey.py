"""Benchmark: what rspamd's `check_pubkey` (a TXT lookup before each signature, the gate of a
DKIM rotation) costs per signed message (run by hand, as root, not beside
tests/e2e/test_rspamd_dkim_rotation.py, whose ports it shares:
`.venv/bin/python bench/filter/pubkey.py [--messages 200] [--rounds 3]`).

One Postfix + rspamd booted as that e2e test boots them, a rotation under way and both keys
published on a loopback DNS server, so every message is signed twice. Rounds alternate the
role's dkim_signing.conf (`check_pubkey = true`) with the same file set to false (rspamd
restarted between them); each round submits `messages` messages with AUTH over 4 sessions
and reports rspamd's CPU seconds (all its processes, from /proc) per message and the rate
until the sink has them all. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests/e2e")]

from mailhost import boot_mailhost, listening_ports, make_traversable, stop_child  # noqa: E402
from rspamdlab import run_role_builds  # noqa: E402
from smtpsink import smtp_sink  # noqa: E402

from compiler.tools.dkimkeys import parse_dkim_record  # noqa: E402
from compiler.tools.dnsrecords import quote_txt  # noqa: E402
from tests.e2e.test_rspamd_dkim_rotation import (  # noqa: E402
    DNS_PORT,
    FILTER_PORTS,
    NEW,
    OLD,
    PORT_BASE,
    SINK_PORT,
    make_inventory,
    message,
    postconf,
    rotation_policy,
    start_rspamd,
)
from tests.runtime.dnsserver import Zone, dns_server  # noqa: E402

CLIENTS = 4
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its children that are still running (rspamd's workers)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        pids += [int(c) for c in children]
    return total / TICKS


def send_all(address: str, port: int, count: int, tag: str) -> None:
    def client(n: int, k: int) -> None:
        with smtplib.SMTP(address, port, timeout=120, source_address=("127.0.0.3", 0)) as s:
            s.starttls(context=ssl._create_unverified_context())
            s.login("alice@example.com", "pw1")
            for i in range(n):
                body = message("alice@example.com", "far@sink.test", f"{tag} {k} {i}")
                s.sendmail("alice@example.com", ["far@sink.test"], body)

    share = [count // CLIENTS + (1 if i < count % CLIENTS else 0) for i in range(CLIENTS)]
    threads = [threading.Thread(target=client, args=(n, k)) for k, n in enumerate(share)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mailcfg-bench-pubkey-"))
    base.chmod(0o755)
    zone = Zone({"example.com.": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]})
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        with (
            dns_server(zone, DNS_PORT),
            smtp_sink(SINK_PORT) as sink,
            boot_mailhost(make_inventory(), "mx1", base, PORT_BASE,
                          policy=rotation_policy(base)) as mh,
        ):  # fmt: skip
            (base / "log").mkdir(exist_ok=True)
            run_role_builds(mh, ["rspamd"])
            keydir = base / "lib/rspamd-dkim"
            make_traversable(keydir)
            for selector in (OLD, NEW):
                kind, key = parse_dkim_record((keydir / f"{selector}.txt").read_text())
                zone.records[f"{selector}._domainkey.example.com."] = [
                    ("TXT", quote_txt(f"v=DKIM1; k={kind}; p={key}"))
                ]
            postconf(mh, f"relayhost=[127.0.0.1]:{SINK_PORT}")
            confdir = Path(mh.cfg.policy.paths.rspamd_config_dir)
            conf = confdir / "local.d/dkim_signing.conf"
            rendered = conf.read_text()
            assert "check_pubkey = true;" in rendered
            port = FILTER_PORTS["rspamd_proxy"]
            for round_ in range(args.rounds):
                for check in (True, False):
                    text = rendered if check else rendered.replace(
                        "check_pubkey = true;", "check_pubkey = false;"
                    )  # fmt: skip
                    conf.write_text(text)
                    if procs:
                        stop_child(procs.pop())
                        while port in listening_ports("127.0.0.1"):
                            time.sleep(0.2)
                    procs.append(start_rspamd(base, confdir))
                    while port not in listening_ports("127.0.0.1"):
                        time.sleep(0.2)
                    tag = f"r{round_}-{check}"
                    send_all(mh.address, mh.ports["submission"], 4, tag + "-warm")
                    while sum(tag.encode() in m.data for m in sink.messages) < 4:
                        time.sleep(0.05)
                    cpu0, start = cpu_seconds(procs[-1].pid), time.monotonic()
                    send_all(mh.address, mh.ports["submission"], args.messages, tag)
                    want = args.messages + 4
                    while sum(tag.encode() in m.data for m in sink.messages) < want:
                        time.sleep(0.05)
                    wall = time.monotonic() - start
                    cpu = cpu_seconds(procs[-1].pid) - cpu0
                    signed = [m for m in sink.messages if f"{tag} ".encode() in m.data]
                    assert all(m.data.count(b"DKIM-Signature:") == 2 for m in signed)
                    results[check].append((cpu / args.messages * 1000, args.messages / wall))
                    print(f"round {round_} check_pubkey={str(check).lower():<5} "
                          f"rspamd {cpu / args.messages * 1000:6.2f} ms CPU/message, "
                          f"{args.messages / wall:6.1f} msg/s", flush=True)  # fmt: skip
    finally:
        for proc in reversed(procs):
            stop_child(proc)
        shutil.rmtree(base, ignore_errors=True)
    for check in (True, False):
        cpu = statistics.median(r[0] for r in results[check])
        rate = statistics.median(r[1] for r in results[check])
        print(f"median check_pubkey={str(check).lower():<5} {cpu:6.2f} ms CPU/message, "
              f"{rate:6.1f} msg/s")  # fmt: skip


if __name__ == "__main__":
    main()
