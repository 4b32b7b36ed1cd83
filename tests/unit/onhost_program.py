"""Run the on-host program exactly as a host does: the zip the controller ships
(`hostcall.onhost_script`), alone in a directory, by the system's `python3 -I -S` (not this
virtualenv's), from a directory that is neither the program's nor the root, with a host's plain
environment. Shared by the on-host and wire tests."""

from __future__ import annotations

import base64
import json
import subprocess
import zlib
from pathlib import Path
from typing import Any

from compiler.push.hostcall import onhost_script

STATE = "var/lib/mailcfg"
SYSTEM_PYTHON = "/usr/bin/python3"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def shipped(root: Path) -> Path:
    """The program as the controller uploads it, alone in a directory beside the root."""
    host_path, content = onhost_script()
    path = root.parent / "shipped" / Path(host_path).name
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
    return path


def run_program(
    root: Path,
    command: str,
    *argv: str,
    services: str = "run",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python3 -I -S <program> COMMAND --root ROOT ARGV…` with a host's plain environment
    (plus `env`), from a directory that is neither the program's nor the root."""
    return subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", str(shipped(root)), command, "--root", str(root), *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=root.parent,
        # These roots stand for real hosts: run their reload/verify commands too (by default).
        env={
            "PATH": HOST_PATH,
            "MAILCFG_ROOT": str(root),
            "MAILCFG_SERVICES": services,
            **(env or {}),
        },
    )


def encode(args: object) -> str:
    return base64.b64encode(zlib.compress(json.dumps(args).encode())).decode()


def call(
    root: Path,
    command: str,
    args: object,
    *extra: str,
    services: str = "run",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    proc = run_program(
        root, command, "--args-b64", encode(args), *extra, services=services, env=env
    )
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert (proc.returncode == 0) == doc["ok"], proc
    return doc


def observe(root: Path, paths: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return call(root, "observe", {"paths": paths or {}, "sensitive": [], "needs": None})
