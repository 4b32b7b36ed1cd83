"""A receiving SMTP server for tests: accepts every message on loopback and keeps it with its
envelope and the client's address (what a receiving provider would see). Own thread, no TLS.

    with smtp_sink(23407) as sink:
        ...
        got = sink.wait_for(lambda m: "far@sink.test" in m.rcpts)
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Received:
    client: str
    helo: str
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes


@dataclass
class Sink:
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, match: Callable[[Received], bool], timeout: float = 30.0) -> Received:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for message in self.messages:
                    if match(message):
                        return message
            time.sleep(0.1)
        raise AssertionError(f"no such message at the sink within {timeout}s: {self.messages}")


def _address(arg: bytes) -> str:
    text = arg.decode(errors="replace").split(":", 1)[1].strip()
    return text.split()[0].strip("<>") if text else ""


class _Session(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        sink: Sink = self.server.sink  # type: ignore[attr-defined]
        write = self.wfile.write
        write(b"220 sink.test ESMTP\r\n")
        helo, mail_from, rcpts = "", "", []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                helo = line[5:].strip().decode(errors="replace")
                write(b"250-sink.test\r\n250 8BITMIME\r\n" if verb == b"EHLO" else b"250 ok\r\n")
            elif verb == b"MAIL":
                mail_from, rcpts = _address(line), []
                write(b"250 ok\r\n")
            elif verb == b"RCPT":
                rcpts.append(_address(line))
                write(b"250 ok\r\n")
            elif verb == b"DATA":
                write(b"354 go\r\n")
                lines = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                with sink.lock:
                    sink.messages.append(
                        Received(self.client_address[0], helo, mail_from, tuple(rcpts),
                                 b"".join(lines))
                    )  # fmt: skip
                write(b"250 queued\r\n")
            elif verb == b"RSET":
                mail_from, rcpts = "", []
                write(b"250 ok\r\n")
            elif verb == b"QUIT":
                write(b"221 bye\r\n")
                return
            else:
                write(b"250 ok\r\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def smtp_sink(port: int, host: str = "127.0.0.1") -> Iterator[Sink]:
    sink = Sink()
    server = _Server((host, port), _Session)
    server.sink = sink  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
