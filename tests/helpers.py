"""Small waiting helpers shared by the test suites."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def wait_for_path(
    path: Path,
    deadline: float,
    *,
    while_alive: Callable[[], bool] | None = None,
    interval: float = 0.01,
) -> bool:
    """Wait for `path` to exist. True as soon as it does; False once `deadline` (a
    `time.monotonic()` value) has passed, or as soon as `while_alive()` is false (the process
    meant to create it has died). The caller decides what a False means."""
    while not path.exists():
        if time.monotonic() > deadline or (while_alive is not None and not while_alive()):
            return path.exists()
        time.sleep(interval)
    return True
