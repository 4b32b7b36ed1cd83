"""A floor for `run.py`: the least a durable per-sender limit server must do per decision, so
the table can show how much of the agent's CPU is its own work and how much is the socket,
event-loop and SQLite work any such server pays.

    python bench/policy/floor.py SOCKET LIMIT DATABASE

On uvloop, like the agent: each request (up to its blank line) is cut from the connection's
buffer, its `sender=` read with one `find`, the sender's count looked up in memory and the
answer chosen against LIMIT; once per event-loop pass the charges of all requests that came
in are inserted into a WAL-mode SQLite table (`synchronous=NORMAL`) in one transaction, and
the replies are written after the commit, as the agent does. Nothing else: no request
validation, no limit windows or locks, no statistics, no fail-safe answers, no protection
against hostile clients. Not a policy server to run.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys

import uvloop

OK = b"action=DUNNO\n\n"
OVER = b"action=DEFER_IF_PERMIT 4.7.1 sending limit reached\n\n"


class FloorServer:
    """The counts in memory, the pending charges and replies of this event-loop pass."""

    def __init__(self, limit: int, database: str) -> None:
        self.limit = limit
        self.db = sqlite3.connect(database, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS charges(account TEXT, n INTEGER)")
        self.counts: dict[str, int] = {}
        self.charges: list[tuple[str, int]] = []
        self.replies: list[tuple[asyncio.Transport, bytes]] = []

    def decide(self, request: bytes, transport: asyncio.Transport) -> None:
        i = request.find(b"\nsender=") + 8
        account = request[i : request.find(b"\n", i)].decode()
        n = self.counts.get(account, 0)
        if n < self.limit:
            self.counts[account] = n + 1
            self.charges.append((account, n + 1))
            reply = OK
        else:
            reply = OVER
        if not self.replies:
            asyncio.get_running_loop().call_soon(self.flush)
        self.replies.append((transport, reply))

    def flush(self) -> None:
        charges, self.charges = self.charges, []
        replies, self.replies = self.replies, []
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT INTO charges VALUES (?, ?)", charges)
        self.db.execute("COMMIT")
        for transport, reply in replies:
            transport.write(reply)


class FloorConnection(asyncio.Protocol):
    def __init__(self, server: FloorServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            assert self.transport is not None
            self.server.decide(buffer[start : end + 1], self.transport)
            start = end + 2
        self.buffer = buffer[start:]


async def serve(path: str, server: FloorServer) -> None:
    listener = await asyncio.get_running_loop().create_unix_server(
        lambda: FloorConnection(server), path
    )
    await listener.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1], FloorServer(int(sys.argv[2]), sys.argv[3])))
