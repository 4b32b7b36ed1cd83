"""The `Transport` protocol (run a command, put a file, get a file) and `LocalTransport`.

`LocalTransport` maps the host's "/" to a directory on this machine: the embedded default for
the example inventory and fast tests. Commands run on this machine with `MAILCFG_ROOT` set.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class TransportError(Exception):
    """The host could not be reached or the connection broke; `step` names where."""

    def __init__(self, host: str, message: str, step: str = "connect") -> None:
        super().__init__(f"{host}: {step}: {message}")
        self.host = host
        self.step = step


class Transport(Protocol):
    host: str

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run a shell command on the host (paths are the host's)."""
        ...

    def put(self, path: str, content: bytes, mode: int = 0o644) -> None:
        """Write `content` to `path` on the host (parent directories created)."""
        ...

    def get(self, path: str) -> bytes:
        """Read a file from the host; FileNotFoundError if it does not exist."""
        ...

    def close(self) -> None: ...


class LocalTransport:
    """A directory standing for a host's "/". Host paths are mapped under `root`; commands run
    here with cwd=root and `MAILCFG_ROOT=root` (the on-host scripts honour it)."""

    def __init__(self, host: str, root: Path) -> None:
        self.host = host
        self.root = root.resolve()

    def local_path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MAILCFG_ROOT": str(self.root)}
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CommandResult(command, proc.returncode, proc.stdout, proc.stderr)

    def put(self, path: str, content: bytes, mode: int = 0o644) -> None:
        target = self.local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.mailcfg-tmp")
        tmp.write_bytes(content)
        tmp.chmod(mode)
        tmp.replace(target)

    def get(self, path: str) -> bytes:
        return self.local_path(path).read_bytes()

    def close(self) -> None:
        return None
