"""The agent config's watcher (runtime.config.ConfigWatcher) on both of the follower's watcher
backends, without pyinotify at all, and SIGHUP through the daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.config import ConfigWatcher
from runtime.daemon import Daemon
from schemas.agent import AgentConfig
from tests.runtime.policy_fixtures import BASE


def install(path: Path, **overrides: Any) -> None:
    """As the compiler installs it: a temporary file renamed over the config."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**BASE, **overrides}))
    os.rename(tmp, path)


async def wait_for(condition: Any, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.02)


def run_reloads(path: Path, **watcher: Any) -> list[AgentConfig]:
    """Install two new configs (the second in place) and a missing file; the configs seen."""
    install(path)
    seen: list[AgentConfig] = []

    async def main() -> None:
        w = ConfigWatcher(
            path, seen.append, asyncio.get_running_loop(), poll_interval=0.05, **watcher
        )
        try:
            await asyncio.sleep(0.1)
            install(path, global_filter=["one"])
            await wait_for(lambda: len(seen) == 1)
            path.write_text(json.dumps({**BASE, "global_filter": ["two"]}))
            await wait_for(lambda: len(seen) == 2)
            path.unlink()  # a missing file is no new config: nothing is loaded
            await asyncio.sleep(0.3)
        finally:
            w.close()

    asyncio.run(main())
    return seen


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "poll"])
def test_reloads_on_both_watcher_backends(tmp_path: Path, use_inotify: bool) -> None:
    seen = run_reloads(tmp_path / "agent.json", use_inotify=use_inotify)
    assert [c.global_filter for c in seen] == [["one"], ["two"]]


def test_works_without_pyinotify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyinotify", None)  # `import pyinotify` fails
    seen = run_reloads(tmp_path / "agent.json")
    assert [c.global_filter for c in seen] == [["one"], ["two"]]


def test_sighup_reloads_through_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    install(path, global_filter=["first"])
    seen: list[AgentConfig] = []

    async def main() -> None:
        daemon = Daemon.quiet()

        async def service() -> None:
            w = ConfigWatcher(path, seen.append, asyncio.get_running_loop())
            daemon.on_hangup(w.schedule)
            try:
                os.kill(os.getpid(), signal.SIGHUP)
                await wait_for(lambda: len(seen) == 1)  # same file: reloaded all the same
                daemon.stop.set()
                await daemon.stop.wait()
            finally:
                daemon.on_hangup(None)
                w.close()

        await daemon.run(service())

    asyncio.run(main())
    assert [c.global_filter for c in seen] == [["first"]]
