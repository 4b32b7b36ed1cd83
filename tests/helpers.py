"""Small waiting and process helpers shared by the test suites."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def kill_9_after(code: str, argument: str, reported: int) -> int:
    """Run `python -c code argument` (it prints a growing count, one per line, after each
    thing it has made durable), `kill -9` it once it has reported `reported`, and return the
    last count it reported (the pipe may hold more lines than the one that was waited for)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, argument],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    last = 0
    for line in proc.stdout:
        last = int(line)
        if last >= reported:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:
        last = int(line)
    return last
