"""The `Transport` protocol (run a command, put a file, get a file), its command result and
its error: the one interface every connector implements (`local`, `ssh`)."""

from __future__ import annotations

from dataclasses import dataclass
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
