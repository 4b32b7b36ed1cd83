"""Loading the agent config (`agent.json`) and reloading it when the compiler installs a new one.

`load_agent_config` is the one loader of the file (the policy service, the log commands and
every other command read it through here). `DEFAULT_AGENT_CONFIG` is where the agent role
installs it unless the inventory moves `agent_config_dir`, so commands run on the host find it
without `--config`. The compiler installs the file by atomic rename:
`ConfigWatcher` wakes up through the log follower's watcher interface
(`runtime.logs.follower.make_watcher`: inotify on the file's directory for files renamed in
or closed after writing, when pyinotify is there; else polling) and reloads when the file at
the path is another one or has changed (device, inode, size, times), so a watch never follows
a replaced inode. A reload asked for otherwise (SIGHUP: the daemon calls `schedule`) reloads
in any case. A new config that does
not load is logged and the old one stays in force.

One validation for start and reload: `load_agent_config` (the `AgentConfig` schema, the same
pydantic types `mailcfg validate` checks the inventory with) and then `prepare_policy` (what
only the agent checks: the listen address it would bind at its next start, and the whole
`Policy` built, filters compiled and resolvers made). A reload swaps in the prepared `Policy`
only when both passed, so a config that reloads fine also starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from runtime.logs.follower import INSTALL_EVENTS, Watcher, make_watcher
from schemas.agent import AgentConfig

if TYPE_CHECKING:
    import asyncio  # annotations only: `ingest` and `stats` start without the event loop

    from runtime.policy.engine import Policy

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
    # Imported here: the log commands load configs too and need none of the policy checks.
    from runtime.policy.connection import parse_listen
    from runtime.policy.engine import Policy

    try:
        parse_listen(config.listen)
    except ValueError as exc:
        raise ConfigError(f"invalid agent config: {exc}") from exc
    try:
        return Policy(config)
    except Exception as exc:  # whatever Policy() refuses, say what instead of a traceback
        raise ConfigError(f"agent config not usable: {type(exc).__name__}: {exc}") from exc


POLL_INTERVAL = 1.0  # seconds between checks of the file when there is no inotify

FileSignature = tuple[int, int, int, int, int] | None


def file_signature(path: Path) -> FileSignature:
    """What changes when the file at `path` is replaced or rewritten; None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ConfigWatcher:
    """Calls `on_config(AgentConfig)` on the event loop whenever `path` is replaced or changed
    (or `schedule()` is called: SIGHUP); changes in one burst are coalesced. `on_config`
    refuses a config by raising (ConfigError: logged without a traceback); the current one
    then stays. `close()` stops watching."""

    def __init__(
        self,
        path: str | Path,
        on_config: Callable[[AgentConfig], None],
        loop: asyncio.AbstractEventLoop,
        *,
        settle: float = 0.05,
        use_inotify: bool = True,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.path = Path(path).absolute()
        self.on_config = on_config
        self.loop = loop
        self.settle = settle
        self.poll_interval = poll_interval
        self._pending: asyncio.TimerHandle | None = None
        self._signature = file_signature(self.path)
        self._watcher: Watcher = make_watcher(
            [str(self.path)], use_inotify=use_inotify, events=INSTALL_EVENTS
        )
        self._fd = self._watcher.fileno()
        self._poll: asyncio.TimerHandle | None = None
        if self._fd is not None:
            loop.add_reader(self._fd, self._wake)
        else:
            self._poll = loop.call_later(poll_interval, self._poll_once)

    def _wake(self) -> None:
        self._watcher.drain()
        self._check()

    def _poll_once(self) -> None:
        self._check()
        self._poll = self.loop.call_later(self.poll_interval, self._poll_once)

    def _check(self) -> None:
        """Reload when the file at the path is not the one last seen (a missing file is not
        a config: the current one stays until one is installed)."""
        signature = file_signature(self.path)
        if signature != self._signature:
            self._signature = signature
            if signature is not None:
                self.schedule()

    def schedule(self) -> None:
        if self._pending is None:
            self._pending = self.loop.call_later(self.settle, self.reload)

    def reload(self) -> None:
        self._pending = None
        self._signature = file_signature(self.path)
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
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
        if self._poll is not None:
            self._poll.cancel()
        if self._pending is not None:
            self._pending.cancel()
        self._watcher.close()
