"""Benchmark: messages per second through Postfix without a milter, with rspamd (the rspamd
role's files: DKIM, DMARC, spam scores) and with rspamd + ClamAV, in one run (run by hand, as
root, not beside tests/e2e/test_rspamd_mailflow.py, whose ports it shares:
`.venv/bin/python bench/filter/run.py [--messages 300] [--clients 4]`).

Each configuration boots Postfix + Dovecot from the rendered tree (tests/e2e/mailhost.py)
and, for the filtered ones, rspamd and clamd as the e2e test starts them (a DNS server on
loopback answers rspamd; ClamAV has one local signature, so its scan cost is the daemon's,
not a full signature set's). `clients` SMTP sessions on port 25, each presented by XCLIENT as
an outside address, send small messages to one mailbox; the figure is messages delivered to
the mailbox (Dovecot's LMTP) per second of wall time, from the first MAIL to the last
delivery.
"""

from __future__ import annotations

import argparse
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests/e2e")]

from mailhost import boot_mailhost, listening_ports, make_traversable, stop_child  # noqa: E402

from tests.e2e.test_rspamd_mailflow import (  # noqa: E402
    DNS_PORT,
    FILTER_PORTS,
    ORIGIN_IP,
    PORT_BASE,
    base_zone,
    filter_policy,
    make_inventory,
    message,
    postconf,
    run_role_builds,
    start_clamd,
    start_rspamd,
)
from tests.runtime.dnsserver import dns_server  # noqa: E402


def send_all(address: str, port: int, count: int, clients: int) -> None:
    def client(n: int) -> None:
        with smtplib.SMTP(address, port, timeout=120, source_address=("127.0.0.2", 0)) as s:
            s.ehlo("client.test")
            s.docmd("XCLIENT", f"ADDR={ORIGIN_IP} NAME=[UNAVAILABLE] HELO=client.test")
            s.ehlo("client.test")
            for i in range(n):
                body = message("bob@origin.test", "alice@example.com", f"bench {i}")
                s.sendmail("bob@origin.test", ["alice@example.com"], body)

    share = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure(name: str, filters: bool, clamav: bool, count: int, clients: int) -> float:
    base = Path(tempfile.mkdtemp(prefix="mailcfg-bench-filter-"))
    base.chmod(0o755)
    policy: dict[str, object] = {}
    if filters:
        policy = {**filter_policy(base), "antivirus": clamav, "srs": False}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (
            dns_server(base_zone(), DNS_PORT),
            boot_mailhost(make_inventory(), "mx1", base, PORT_BASE, policy=policy) as mh,
        ):
            (base / "run").mkdir(exist_ok=True)
            postconf(mh, "smtpd_authorized_xclient_hosts=127.0.0.0/8")
            if filters:
                run_role_builds(mh)
                make_traversable(base / "lib/rspamd-dkim")
                paths = mh.cfg.policy.paths
                if clamav:
                    procs.append(start_clamd(base, Path(paths.clamd_socket)))
                procs.append(start_rspamd(base, Path(paths.rspamd_config_dir)))
                wait(lambda: FILTER_PORTS["rspamd_proxy"] in listening_ports("127.0.0.1"))
                if clamav:
                    wait(Path(paths.clamd_socket).exists)
            # One message first, so the daemons' start-up is not measured.
            send_all(mh.address, mh.ports["smtp"], 1, 1)
            mh.wait_for_messages("alice@example.com", 1, timeout=120)
            before = len(mh.messages("alice@example.com"))
            start = time.monotonic()
            send_all(mh.address, mh.ports["smtp"], count, clients)
            mh.wait_for_messages("alice@example.com", before + count, timeout=600)
            rate = count / (time.monotonic() - start)
    finally:
        for proc in reversed(procs):
            stop_child(proc)
        shutil.rmtree(base, ignore_errors=True)
    print(f"{name:<26} {rate:8.1f} messages/s", flush=True)
    return rate


def wait(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for a filter daemon")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"{args.messages} messages, {args.clients} clients", flush=True)
    measure("postfix", False, False, args.messages, args.clients)
    measure("postfix + rspamd", True, False, args.messages, args.clients)
    measure("postfix + rspamd + clamav", True, True, args.messages, args.clients)


if __name__ == "__main__":
    main()
