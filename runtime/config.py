"""Loading the agent config (`agent.json`) and reloading it when the compiler installs a new one.

The compiler installs the file by atomic rename, so the watcher watches the directory for
IN_MOVED_TO / IN_CLOSE_WRITE of the file's name (a watch on the file itself would follow the
replaced inode). SIGHUP triggers the same reload. A new config that does not load is logged and
the old one stays in force.

One validation for start and reload: `load_agent_config` (the `AgentConfig` schema, the same
pydantic types `mailcfg validate` checks the inventory with) and then `prepare_policy` (what
only the agent checks: the listen address it would bind at its next start, and the whole
`Policy` built, filters compiled and resolvers made). A reload swaps in the prepared `Policy`
only when both passed, so a config that reloads fine also starts.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pyinotify
from pydantic import ValidationError

from runtime.policy.connection import parse_listen
from runtime.policy.engine import Policy
from schemas.agent import AgentConfig

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """The agent config can't be used; the message names the file and the cause."""


def load_agent_config(path: str | Path) -> AgentConfig:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read agent config: {exc.strerror or exc}") from exc
    try:
        return AgentConfig.model_validate_json(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors()[:10]:
            where = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"{p}: invalid agent config:\n" + "\n".join(lines)) from exc


def prepare_policy(config: AgentConfig) -> Policy:
    """Everything the agent checks beyond the schema before it serves `config`, at start and
    at reload alike; ConfigError if the agent can't run with it."""
    try:
        parse_listen(config.listen)
    except ValueError as exc:
        raise ConfigError(f"invalid agent config: {exc}") from exc
    try:
        return Policy(config)
    except Exception as exc:  # whatever Policy() refuses, say what instead of a traceback
        raise ConfigError(f"agent config not usable: {type(exc).__name__}: {exc}") from exc


class ConfigWatcher:
    """Calls `on_config(AgentConfig)` on the event loop whenever `path` is replaced (or on
    SIGHUP); changes in one burst are coalesced. `on_config` refuses a config by raising
    (ConfigError: logged without a traceback); the current one then stays. `close()` stops
    watching."""

    def __init__(
        self,
        path: str | Path,
        on_config: Callable[[AgentConfig], None],
        loop: asyncio.AbstractEventLoop,
        *,
        settle: float = 0.05,
    ) -> None:
        self.path = Path(path).absolute()
        self.on_config = on_config
        self.loop = loop
        self.settle = settle
        self._pending: asyncio.TimerHandle | None = None
        self._wm = pyinotify.WatchManager()
        mask = pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE
        self._wm.add_watch(str(self.path.parent), mask, quiet=False)
        self._notifier = pyinotify.Notifier(self._wm, self._on_event, timeout=0)
        self._fd = self._wm.get_fd()
        loop.add_reader(self._fd, self._read)
        self._sighup = False
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, self.schedule)
            self._sighup = True

    def _read(self) -> None:
        self._notifier.read_events()
        self._notifier.process_events()

    def _on_event(self, event: pyinotify.Event) -> None:
        if event.name == self.path.name:
            self.schedule()

    def schedule(self) -> None:
        if self._pending is None:
            self._pending = self.loop.call_later(self.settle, self.reload)

    def reload(self) -> None:
        self._pending = None
        try:
            config = load_agent_config(self.path)
        except ConfigError as exc:
            log.error("keeping the current config: %s", exc)
            return
        try:
            self.on_config(config)
        except ConfigError as exc:
            log.error("keeping the current config: %s: %s", self.path, exc)
            return
        except Exception:
            log.exception("keeping the current config: applying %s failed", self.path)
            return
        log.info("reloaded %s", self.path)

    def close(self) -> None:
        self.loop.remove_reader(self._fd)
        if self._sighup:
            self.loop.remove_signal_handler(signal.SIGHUP)
        if self._pending is not None:
            self._pending.cancel()
        self._wm.close()
