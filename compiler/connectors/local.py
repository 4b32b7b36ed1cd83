"""`LocalTransport`: a directory on this machine standing for a host's "/".

The embedded default for the example inventory and fast tests. Commands run on this machine
with `MAILCFG_ROOT` set, in a session of their own, as on a remote host: a Ctrl-C at the
controller's terminal does not reach them, and the controller interrupted while waiting does
not kill them (an apply goes on to its commit or rollback, as it does over SSH).

Its files stay below the root: the root is never "/" or a system directory, and `put`/`get`
take host paths as plain names below it, never following a symbolic link inside it
(`compiler.connectors.confine`); `put` writes beside the file and renames (atomic).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from compiler.connectors.confine import ConfinedDir, local_root_problem, split_below
from compiler.connectors.transport import CommandResult, TransportError


class LocalTransport:
    """A directory standing for a host's "/". Host paths are mapped under `root`; commands run
    here with cwd=root and `MAILCFG_ROOT=root` (the on-host scripts honour it). `root` is
    refused when it is (or resolves to) "/", a system directory or the home directory of
    whoever runs mailcfg: the host's files would overwrite this machine's own."""

    def __init__(self, host: str, root: Path) -> None:
        self.host = host
        self.root = root.resolve()
        problem = local_root_problem(str(self.root))
        if problem is None and self.root == Path.home().resolve():
            problem = f"{str(self.root)!r} is the home directory of the user running mailcfg"
        if problem:
            raise TransportError(host, f"local root {root}: {problem}", "connect")

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        ConfinedDir(self.root).close()  # created if missing; refused if it is a link
        env = {**os.environ, "MAILCFG_ROOT": str(self.root)}
        # Not subprocess.run: on any exception (KeyboardInterrupt included) it kills the
        # command, and a killed apply is a crash mid-change.
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # the caller's bound, as the SSH transport's
            proc.communicate()
            raise
        return CommandResult(command, proc.returncode, out, err)

    def put(self, path: str, content: bytes, mode: int = 0o644) -> None:
        with ConfinedDir(self.root) as root:
            root.write(split_below(path), content, mode)

    def get(self, path: str) -> bytes:
        parts = split_below(path)
        with ConfinedDir(self.root, create=False) as root:
            return root.read(parts)

    def close(self) -> None:
        return None
