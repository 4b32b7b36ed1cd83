"""The agent as part of a release, through the on-host program run as a host runs it (a
temporary root): an apply installs the controller's agent from the bundle's wheels into its own
venv (`opt/mailcfg/agent/<id>`, no index) and points `current` at it; a new version is a new
release, rolled back with it; a failed change puts `current` back; observe reports the
installs on a machine (a directory root is none: the controller never sends it an agent);
installs no stored release names are pruned. Uses the real wheelhouse of this
controller's agent (made once from the package index, then cached; skipped without one) and a
second agent built from a copy of the sources with another version."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from compiler.push.agentdist import (
    AgentDistError,
    Wheelhouse,
    build_agent_wheel,
    make_wheelhouse,
    source_root,
)
from compiler.push.apply import make_bundle
from compiler.push.hostcall import activation_to_json
from compiler.push.hostneeds import needs_to_json
from compiler.types import Activation, FileTree, HostNeeds, Plan, RenderedFile
from tests.unit.onhost_program import STATE, SYSTEM_PYTHON, call

HOME = "opt/mailcfg/agent"
AGENT = Activation("agent", "mailcfg-agent", "restart", apply=("echo agent >> restarts",))
FAILING = Activation("postfix", "postfix", "reload", verify=("exit 3",))


def system_python() -> str:
    code = "import sys; print('.'.join(map(str, sys.version_info[:3])))"
    out = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", code], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def wheelhouse() -> Wheelhouse:
    try:
        return make_wheelhouse(system_python(), os.uname().machine)
    except AgentDistError as exc:
        pytest.skip(f"no package index reachable to make the agent's wheelhouse: {exc}")


@pytest.fixture(scope="module")
def second_agent(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str, bytes]:
    """(id, version, wheel name, wheel) of the agent built from a copy of the sources whose
    version is 99.0.0."""
    src = tmp_path_factory.mktemp("src")
    for package in ("runtime", "schemas"):
        shutil.copytree(source_root() / package, src / package)
    project = (source_root() / "pyproject.toml").read_text()
    version_line = next(line for line in project.splitlines() if line.startswith("version = "))
    (src / "pyproject.toml").write_text(project.replace(version_line, 'version = "99.0.0"', 1))
    name, wheel = build_agent_wheel(src)
    return f"99.0.0-{hashlib.sha256(wheel).hexdigest()[:12]}", "99.0.0", name, wheel


def bundle_with_agent(
    root: Path, release_id: str, content: bytes, agent: dict[str, Any] | None,
    wheels: dict[str, bytes], activations: tuple[Activation, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """Apply a one-file tree whose bundle names `agent` and carries `wheels`."""
    tree = FileTree({"/etc/a": RenderedFile("/etc/a", content, role="postfix")})
    current_file = root / STATE / "current"
    current = current_file.read_text().strip() if current_file.exists() else None
    plan = Plan("h", (), activations, tree.digest, current)
    plain = make_bundle(plan, tree, activations=activations, release_id=release_id, keep_releases=5)
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(plain)) as src,
        tarfile.open(fileobj=out, mode="w:gz") as dst,
    ):
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "release.json":
                doc = json.loads(data)
                doc["agent"] = agent
                data = json.dumps(doc).encode()
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
        for name, data in wheels.items():
            info = tarfile.TarInfo(f"agent/{name}")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    where = f"/{STATE}/incoming/{release_id}.tar.gz"
    (root / where.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / where.lstrip("/")).write_bytes(out.getvalue())
    return call(root, "apply", {"bundle": where})


def agent_doc(ident: str, version: str, wheels: dict[str, bytes]) -> dict[str, Any]:
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in wheels.items()}
    return {"id": ident, "version": version, "wheels": digests}


def current(root: Path) -> str:
    return os.readlink(root / HOME / "current")


def agent_facts(root: Path) -> dict[str, Any]:
    """What `observe` reports of the agent on a machine ("/"; a directory root is none)."""
    needs = needs_to_json(HostNeeds(agent=True))
    doc = call(root, "observe", {"paths": {}, "sensitive": [], "needs": needs})
    assert doc["system"]["agent"] is None  # a directory root: nothing installed below it
    home = root / HOME
    complete = [p for p in home.iterdir() if (p / ".mailcfg-complete").is_file()]
    installed = sorted(p.name for p in complete if not p.is_symlink())
    return {"current": current(root), "installed": installed}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "host"
    (r / STATE).mkdir(parents=True)
    return r


def test_upgrade_is_a_release_and_rolls_back_with_it(
    root: Path, wheelhouse: Wheelhouse, second_agent: tuple[str, str, str, bytes]
) -> None:
    wheels = wheelhouse.read()
    first = agent_doc(wheelhouse.agent_id, wheelhouse.version, wheels)
    assert bundle_with_agent(root, "r1", b"1", first, wheels)["ok"]
    assert current(root) == wheelhouse.agent_id
    venv = root / HOME / wheelhouse.agent_id
    script = (venv / "bin/mailcfg-agent").read_text().splitlines()[0]
    assert script == f"#!{venv}/bin/python3"  # by absolute path, no /usr/bin/env
    ran = subprocess.run([venv / "bin/mailcfg-agent", "--help"], capture_output=True, text=True)
    assert ran.returncode == 0 and "serve" in ran.stdout
    record = json.loads((root / STATE / "releases/r1/release.json").read_text())
    assert record["agent"] == wheelhouse.agent_id
    assert not any((root / STATE / "staging").glob("agent-*"))  # the wheels are not kept

    # A new version: its wheel and the dependencies (pip needs them all, from the bundle only).
    ident, version, name, wheel = second_agent
    deps = {n: d for n, d in wheels.items() if not n.startswith("mailcfg-")}
    upgrade = {name: wheel, **deps}
    doc = bundle_with_agent(root, "r2", b"2", agent_doc(ident, version, upgrade), upgrade, (AGENT,))
    assert doc["ok"], doc
    assert current(root) == ident
    assert agent_facts(root) == {"current": ident, "installed": sorted([ident, first["id"]])}

    # Rollback: `current` back with the files, and the agent's role is restarted (its files
    # are the same: the install differs).
    acts = [activation_to_json(AGENT)]
    doc = call(root, "rollback", {"to": None, "activations": acts})
    assert doc["ok"] and doc["release_id"] == "r1", doc
    assert current(root) == wheelhouse.agent_id and (root / "etc/a").read_bytes() == b"1"
    assert (root / "restarts").read_text().split() == ["agent", "agent"]

    # Forward again with no wheels: the install is still there.
    doc = call(root, "rollback", {"to": "r2", "activations": acts})
    assert doc["ok"] and current(root) == ident


def test_a_failed_change_puts_current_back_and_unused_installs_go(
    root: Path, wheelhouse: Wheelhouse, second_agent: tuple[str, str, str, bytes]
) -> None:
    wheels = wheelhouse.read()
    first = agent_doc(wheelhouse.agent_id, wheelhouse.version, wheels)
    assert bundle_with_agent(root, "r1", b"1", first, wheels)["ok"]
    ident, version, name, wheel = second_agent
    upgrade = {name: wheel, **{n: d for n, d in wheels.items() if not n.startswith("mailcfg-")}}
    doc = bundle_with_agent(
        root, "r2", b"2", agent_doc(ident, version, upgrade), upgrade, (FAILING,)
    )
    assert not doc["ok"] and doc["step"] == "verify", doc
    assert current(root) == wheelhouse.agent_id and (root / "etc/a").read_bytes() == b"1"

    # No wheels for an agent the host lacks: refused before anything changes.
    doc = bundle_with_agent(root, "r3", b"3", agent_doc("7.0.0-0123456789ab", "7.0.0", {}), {})
    assert not doc["ok"] and doc["step"] == "agent" and "plan again" in doc["message"]

    # A corrupted wheel is refused by its sha256.
    bad = agent_doc("7.0.0-0123456789ab", "7.0.0", {"x-1-py3-none-any.whl": b"good"})
    doc = bundle_with_agent(root, "r3", b"3", bad, {"x-1-py3-none-any.whl": b"evil"})
    assert not doc["ok"] and "sha256 mismatch" in doc["message"]

    # The next commit prunes the install of the failed change (no stored release names it).
    assert ident in agent_facts(root)["installed"]
    assert bundle_with_agent(root, "r4", b"4", None, {})["ok"]
    assert agent_facts(root) == {"current": wheelhouse.agent_id, "installed": [first["id"]]}


@pytest.mark.parametrize(
    ("ident", "wheel"),
    [("../../etc", "a-1-py3-none-any.whl"), ("1.0-0123456789ab", "../evil.whl"),
     ("1.0-0123456789ab", "-e.whl")],
)  # fmt: skip
def test_hostile_agent_names_are_refused(root: Path, ident: str, wheel: str) -> None:
    doc = bundle_with_agent(root, "r1", b"1", agent_doc(ident, "1.0", {wheel: b"w"}), {})
    assert not doc["ok"] and doc["step"] == "input", doc
    assert not (root / "etc/a").exists() and not (root / "opt").exists()
