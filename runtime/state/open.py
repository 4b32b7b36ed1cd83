"""`open_store(dsn)`: the state backend named by a DSN.

`sqlite:///var/lib/mailcfg/agent/state.db` (absolute path after the third slash),
`sqlite:relative/path.db`, `redis://host:port/db` (also `rediss://`, `unix://`).
`host` names this host for what is per host in a shared backend (log positions).
"""

from __future__ import annotations

from runtime.state.limits import LimitStore


class StoreError(Exception):
    """The DSN is not understood or the backend cannot be opened."""


def open_store(dsn: str, *, host: str = "") -> LimitStore:
    if dsn.startswith("sqlite:"):
        from runtime.state.sqlite import SqliteStore

        path = dsn[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise StoreError(f"state {dsn!r}: no file path (expected sqlite:///PATH)")
        try:
            return SqliteStore(path)
        except Exception as exc:
            raise StoreError(f"state {dsn!r}: cannot open the SQLite database: {exc}") from exc
    if dsn.startswith(("redis://", "rediss://", "unix://")):
        from runtime.state.redis import RedisStore

        try:
            return RedisStore(dsn, host=host)
        except Exception as exc:
            raise StoreError(f"state {dsn!r}: {exc}") from exc
    raise StoreError(f"state {dsn!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")
