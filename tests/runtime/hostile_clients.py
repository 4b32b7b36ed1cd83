"""Hostile policy clients, run as their own process by test_hostile_clients.py (so their work
never delays the measuring client): thousands of idle connections, random bytes, oversized
lines, connection resets, bad UTF-8 in every attribute and pathological senders.

`python -m tests.runtime.hostile_clients HOST PORT SECONDS IDLE` prints one JSON object: what
each kind of client saw. Every attack runs for SECONDS; evicted idle clients come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import socket
import struct
import sys
import time
from typing import Any

from tests.runtime.policy_fixtures import encode, inbound, outbound

# Not UTF-8: an invalid start byte, a lone continuation byte, an overlong form, a surrogate.
BAD_UTF8 = b"\xff\xfe\x80\xc0\xaf\xed\xa0\x80z"
# A pathological sender against every filter: the global filter (`/(a+)+$/` backtracks on
# these in a backtracking engine), the recipients' black/white lists, SPF and the DNSBL.
PATHOLOGICAL = [
    "a" * 15000 + "!",
    "a" * 15000,
    "a" * 8000 + "@" + "a" * 6000 + ".test",
    ("a" * 60 + ".") * 200 + "!@x.test",
    "@" * 12000,
    "%{l}" * 3000 + "@soft.org",
]


class Report:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {
            "idle_connections": 0,
            "idle_evicted": 0,
            "idle_answered": 0,
            "random_closed": 0,
            "oversized_closed": 0,
            "resets": 0,
            "bad_utf8": {},
            "pathological": 0,
            "pathological_max_latency": 0.0,
            "pathological_answers": {},
            "errors": [],
        }

    def error(self, what: str) -> None:
        if len(self.data["errors"]) < 50:
            self.data["errors"].append(what)


async def read_reply(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\n\n"), timeout)


async def idle_client(host: str, port: int, n: int, end: float, report: Report) -> None:
    """Connect and idle until evicted, then come back. Every other client completes one
    request first (an established connection), the rest never send a byte."""
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        report.data["idle_connections"] += 1
        try:
            if n % 2:
                writer.write(encode(inbound("carol@example.com", "friend@ok.org")))
                if await read_reply(reader) == b"action=DUNNO\n\n":
                    report.data["idle_answered"] += 1
            left = end - time.monotonic()
            if left > 0 and await asyncio.wait_for(reader.read(), left) == b"":
                report.data["idle_evicted"] += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
        await asyncio.sleep(3.0 + 2 * random.random())


async def random_bytes(host: str, port: int, end: float, report: Report) -> None:
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(os.urandom(random.choice((7, 500, 5000, 40000))) + b"\n\n")
            await asyncio.wait_for(reader.read(), 15)  # a protocol error closes it
            report.data["random_closed"] += 1
            writer.close()
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(0.05)


async def oversized(host: str, port: int, end: float, report: Report) -> None:
    lines = [
        b"sender=" + b"a" * 100000 + b"\n\n",
        b"sender=" + b"a" * 100000,  # never ends
        b"x" * 70000 + b"=y\n\n",
        encode(inbound("alice@example.com", "a" * 100000 + "@x.test")),
    ]
    while time.monotonic() < end:
        for line in lines:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(line)
                if await asyncio.wait_for(reader.read(), 15) == b"":
                    report.data["oversized_closed"] += 1
                writer.close()
            except (OSError, TimeoutError):
                pass
        await asyncio.sleep(0.1)


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def resets(host: str, port: int, end: float, report: Report) -> None:
    """RST at every stage: right away, mid-request, and with the answer on its way."""
    loop = asyncio.get_running_loop()
    request = encode(inbound("alice@example.com", "x@ok.org", client="192.0.2.10"))
    stage = 0
    while time.monotonic() < end:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            if stage % 3 == 1:
                await loop.sock_sendall(sock, request[:20])
            elif stage % 3 == 2:
                await loop.sock_sendall(sock, request * 3)
            _reset(sock)
            report.data["resets"] += 1
        except OSError:
            sock.close()
        stage += 1
        await asyncio.sleep(0.01)


def bad_utf8_cases() -> list[tuple[str, bytes, str]]:
    """(case, request bytes, the answer it must get) for bad UTF-8 in every attribute."""
    cases: list[tuple[str, bytes, str]] = []
    base = inbound("bob@example.com", "spam@bad.org", client="192.0.2.10", instance="bad.1")
    expect_by_name = {"protocol_state": "DUNNO", "recipient": "DUNNO", "sender": "ANY"}
    for name in base:
        raw = encode({**base, name: "PLACEHOLDER"}).replace(b"PLACEHOLDER", BAD_UTF8)
        cases.append((f"inbound {name}", raw, expect_by_name.get(name, "REJECT 5.7.1")))
    # Appended to a valid value, and in an attribute's name.
    helo = b"helo_name=mail.sender.test"
    raw = encode(base).replace(helo, helo + BAD_UTF8)
    cases.append(("inbound helo suffix", raw, "REJECT 5.7.1"))
    raw = encode(base)[:-1] + BAD_UTF8 + b"=" + BAD_UTF8 + b"\n\n"
    cases.append(("attribute name", raw, "REJECT 5.7.1"))
    # SPF evaluated with bad bytes in what it reads: the verdict is still SPF's.
    # (Each its own message: an SPF result is kept for the rest of its message's requests.)
    spf = inbound("alice@example.com", "x@fail.org", client="192.0.2.10")
    for name in ("helo_name", "instance"):
        one = {**spf, "instance": f"spf.{name}", name: "PLACEHOLDER"}
        raw = encode(one).replace(b"PLACEHOLDER", BAD_UTF8)
        cases.append((f"spf {name}", raw, "REJECT 5.7.23"))
    raw = encode({**spf, "instance": "spf.sender"})
    raw = raw.replace(b"sender=x@", b"sender=x" + BAD_UTF8 + b"@")
    cases.append(("spf sender local part", raw, "REJECT 5.7.23"))
    out = outbound("eve@example.com")
    for name in out:
        raw = encode({**out, name: "PLACEHOLDER"}).replace(b"PLACEHOLDER", BAD_UTF8)
        want = {"sasl_username": "DEFER 4.3.5", "protocol_state": "DUNNO"}.get(name, "DUNNO")
        cases.append((f"outbound {name}", raw, want))
    return cases


async def bad_utf8(host: str, port: int, end: float, report: Report) -> None:
    cases = bad_utf8_cases()
    results: dict[str, str] = report.data["bad_utf8"]
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            for case, raw, want in cases:
                writer.write(raw)
                got = (await read_reply(reader))[7:-2].decode("utf-8", "replace")
                ok = want == "ANY" or got.startswith(want)
                if not ok or case not in results:
                    results[case] = "ok" if ok else f"got {got!r}, want {want!r}"
            writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            report.error(f"bad utf-8 client: {exc!r}")
        await asyncio.sleep(0.2)


async def pathological(host: str, port: int, end: float, report: Report) -> None:
    answers: dict[str, str] = report.data["pathological_answers"]
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            for sender in PATHOLOGICAL:
                for rcpt in ("alice@example.com", "bob@example.com", "carol@example.com"):
                    for client in ("127.0.0.1", "192.0.2.10"):
                        start = time.monotonic()
                        writer.write(encode(inbound(rcpt, sender, client=client)))
                        got = (await read_reply(reader))[7:-2].decode()
                        took = time.monotonic() - start
                        data = report.data
                        data["pathological"] += 1
                        data["pathological_max_latency"] = max(
                            data["pathological_max_latency"], took
                        )
                        answers[f"{sender[:20]}… ({len(sender)}) → {rcpt} from {client}"] = got[:60]
            writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            report.error(f"pathological client: {exc!r}")
        await asyncio.sleep(0.1)


async def run(host: str, port: int, seconds: float, idle: int) -> Report:
    report = Report()
    end = time.monotonic() + seconds
    jobs = [idle_client(host, port, n, end, report) for n in range(idle)]
    jobs += [random_bytes(host, port, end, report) for _ in range(3)]
    jobs += [oversized(host, port, end, report), resets(host, port, end, report)]
    jobs += [bad_utf8(host, port, end, report), pathological(host, port, end, report)]
    await asyncio.gather(*jobs)
    return report


def main() -> None:
    host, port, seconds, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, idle + 512)), hard))
    report = asyncio.run(run(host, port, seconds, idle))
    print(json.dumps(report.data))


if __name__ == "__main__":
    main()
