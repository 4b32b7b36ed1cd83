"""The agent's installs on the host: one virtualenv per agent id under `wire.AGENT_HOME`
(`/opt/mailcfg/agent/<id>`), made from the wheels an apply's bundle carries (`pip --no-index`:
the host needs no network), and `current`, the symlink the agent's unit runs through
(`/opt/mailcfg/agent/current/bin/mailcfg-agent`), pointed at the agent of the release that is
live.

The venv is made at its final path (a venv's scripts name their interpreter by absolute path,
so it cannot be moved into place); a marker written last says it is complete, and a directory
without it is what an interrupted install left, made again. `current` is a release's like its
files: install points it at the new release's agent, a restore (a failed change, a recovery,
a rollback) at the old one's, each with one atomic rename. An install stays while a stored
release names it, so a rollback never needs the controller's wheels.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

from .fileops import sha256_file
from .hostroot import Host, StepFailed
from .wire import AGENT_HOME, AGENT_ID, WHEEL_NAME, AgentDoc, AgentFacts

CURRENT = "current"
COMPLETE = ".mailcfg-complete"
INSTALL_TIMEOUT = 900.0


def read_agent_facts(host: Host) -> AgentFacts:
    """The complete installs and the one `current` points at."""
    home = host.path(AGENT_HOME)
    installed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(home):
            if AGENT_ID.fullmatch(entry.name) and is_complete(os.path.join(home, entry.name)):
                installed.append(entry.name)
    return {"current": current_agent(host), "installed": sorted(installed)}


def current_agent(host: Host) -> str | None:
    try:
        target = os.readlink(os.path.join(host.path(AGENT_HOME), CURRENT))
    except OSError:
        return None
    return target if AGENT_ID.fullmatch(target) else None


def is_complete(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, COMPLETE))


def check_agent_doc(doc: AgentDoc) -> None:
    """Refuse an id or wheel name that could be anything but that on a path or a command."""
    if not AGENT_ID.fullmatch(doc["id"]):
        raise StepFailed("input", f"not an agent id: {doc['id']!r}")
    for name in doc["wheels"]:
        if not WHEEL_NAME.fullmatch(name) or name.startswith("-"):
            raise StepFailed("input", f"not a wheel's name: {name!r}")


def check_wheels(doc: AgentDoc, wheel_dir: str) -> None:
    """Every wheel the document names arrived whole (its sha256)."""
    for name, digest in doc["wheels"].items():
        path = os.path.join(wheel_dir, name)
        if not os.path.isfile(path):
            raise StepFailed("agent", f"{name} missing from the bundle")
        if sha256_file(path) != digest:
            raise StepFailed("agent", f"{name} arrived corrupted (sha256 mismatch)")


def install_agent(host: Host, doc: AgentDoc, wheel_dir: str) -> bool:
    """Make the venv of agent `doc["id"]` from the wheels in `wheel_dir` unless it is
    complete already; whether it made one."""
    check_agent_doc(doc)
    target = os.path.join(host.path(AGENT_HOME), doc["id"])
    if is_complete(target):
        return False
    if not doc["wheels"]:
        raise StepFailed(
            "agent", f"agent {doc['id']} is not installed and the bundle has no wheels: plan again"
        )
    check_wheels(doc, wheel_dir)
    shutil.rmtree(target, ignore_errors=True)  # an interrupted install
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    python = os.path.join(target, "bin", "python3")
    _run([sys.executable, "-I", "-m", "venv", target])
    pip = [python, "-I", "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    _run([*pip, "install", "--no-index", "--no-cache-dir", "--find-links", wheel_dir,
          f"mailcfg=={doc['version']}"])  # fmt: skip
    probe = "import importlib.metadata as m, runtime.cli; print(m.version('mailcfg'))"
    found = _run([python, "-I", "-c", probe]).strip()
    if found != doc["version"]:
        raise StepFailed("agent", f"the installed agent says version {found!r}")
    with open(os.path.join(target, COMPLETE), "w") as f:
        f.write(doc["id"] + "\n")
    return True


def point_agent(host: Host, agent_id: str | None) -> None:
    """`current` → `agent_id` (an install that is complete), atomically; None leaves it."""
    if agent_id is None or current_agent(host) == agent_id:
        return
    home = host.path(AGENT_HOME)
    if not AGENT_ID.fullmatch(agent_id) or not is_complete(os.path.join(home, agent_id)):
        raise StepFailed("agent", f"agent {agent_id} is not installed on this host")
    link = os.path.join(home, f".{CURRENT}-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    os.symlink(agent_id, link)
    os.replace(link, os.path.join(home, CURRENT))


def prune_agents(host: Host, keep: set[str]) -> None:
    """Remove the installs no stored release names (and never the current one)."""
    home = host.path(AGENT_HOME)
    keep = keep | {current_agent(host) or ""}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(home):
            if AGENT_ID.fullmatch(entry.name) and entry.name not in keep:
                shutil.rmtree(entry.path, ignore_errors=True)


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
        )
    except subprocess.TimeoutExpired:
        raise StepFailed("agent", f"{argv[0]}: timed out after {INSTALL_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise StepFailed("agent", f"{argv[0]}: {exc}") from None
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).decode(errors="replace").strip()[-2000:]
        raise StepFailed("agent", f"{' '.join(argv[:4])}… failed: {output}")
    return proc.stdout.decode(errors="replace")
