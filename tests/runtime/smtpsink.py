"""A minimal SMTP sink for tests: asyncio on loopback, in its own thread, no aiosmtpd.

Accepts every envelope (HELO/EHLO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT) and
records it as `Envelope(mail_from, rcpts, data)`; `wait_for(n)` blocks until n were received.
No STARTTLS is offered, so Postfix's `smtp_tls_security_level = may` delivers in plain text.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes


def _path(arg: str) -> str:
    """`FROM:<a@b> SIZE=12` → `a@b`; `<>` → ``."""
    _, _, rest = arg.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        return rest[1 : rest.find(">")]
    return rest.split(" ", 1)[0]


class SmtpSink:
    def __init__(self) -> None:
        self.received: list[Envelope] = []
        self._cond = threading.Condition(threading.RLock())

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Envelope]:
        """All envelopes, once at least `count` were received."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(
                    f"SMTP sink: {len(self.received)} message(s) after {timeout}s, expected {count}"
                )
            return list(self.received)

    def to(self, rcpt: str) -> list[Envelope]:
        with self._cond:
            return [e for e in self.received if rcpt in e.rcpts]

    def wait_for_rcpt(self, rcpt: str, count: int = 1, timeout: float = 20.0) -> list[Envelope]:
        """The envelopes for `rcpt`, once at least `count` arrived."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.to(rcpt)) >= count, timeout):
                raise AssertionError(f"SMTP sink: {self.to(rcpt)} for {rcpt}, expected {count}")
            return self.to(rcpt)

    def _store(self, env: Envelope) -> None:
        with self._cond:
            self.received.append(env)
            self._cond.notify_all()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 sink.test ESMTP")
        mail_from: str | None = None
        rcpts: list[str] = []
        try:
            while line := await reader.readline():
                cmd, _, arg = line.decode(errors="replace").rstrip("\r\n").partition(" ")
                verb = cmd.upper()
                if verb == "EHLO":
                    say("250-sink.test")
                    say("250 8BITMIME")
                elif verb == "HELO":
                    say("250 sink.test")
                elif verb == "MAIL":
                    mail_from, rcpts = _path(arg), []
                    say("250 2.1.0 ok")
                elif verb == "RCPT" and mail_from is not None:
                    rcpts.append(_path(arg))
                    say("250 2.1.5 ok")
                elif verb == "DATA" and rcpts:
                    say("354 end with <CRLF>.<CRLF>")
                    await writer.drain()
                    data = bytearray()
                    while (chunk := await reader.readline()) not in (b".\r\n", b".\n", b""):
                        data += chunk[1:] if chunk.startswith(b".") else chunk
                    self._store(Envelope(mail_from or "", tuple(rcpts), bytes(data)))
                    mail_from, rcpts = None, []
                    say("250 2.0.0 queued")
                elif verb in ("RSET", "NOOP"):
                    if verb == "RSET":
                        mail_from, rcpts = None, []
                    say("250 2.0.0 ok")
                elif verb == "QUIT":
                    say("221 2.0.0 bye")
                    break
                else:
                    say("503 5.5.1 bad sequence of commands")
                await writer.drain()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@contextmanager
def smtp_sink(port: int, host: str = "127.0.0.1") -> Iterator[SmtpSink]:
    """Serve a sink on host:port in a background thread until the block ends."""
    sink = SmtpSink()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server: list[asyncio.Server] = []
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            server.append(
                loop.run_until_complete(
                    asyncio.start_server(sink.handle, host, port, reuse_address=True)
                )
            )
        except BaseException as exc:
            errors.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    if errors:
        loop.close()
        raise errors[0]
    try:
        yield sink
    finally:

        async def stop() -> None:
            server[0].close()
            await server[0].wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
