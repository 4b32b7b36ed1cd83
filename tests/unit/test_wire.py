"""The wire format between the controller and the on-host program: malformed documents refused
on arrival both ways with the field named (the cases are data, in `wire_cases/`), and the
program shipped as one zip that runs as a host runs it, with nothing beside it able to shadow a
standard-library module."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from compiler.connectors.local import LocalTransport
from compiler.push.apply import apply_plan, list_releases, rollback_release
from compiler.push.hostcall import HostError, onhost_script, zip_program
from compiler.push.hostside import wire, wirecheck
from compiler.push.observe import observe_host
from compiler.types import Activation, FileTree, Plan
from tests.unit.onhost_program import STATE, call, run_program

CASES = Path(__file__).parent / "wire_cases"
HOSTSIDE = Path(wire.__file__).parent


def load_cases(name: str) -> list[Any]:
    cases: list[Any] = json.loads((CASES / name).read_text())
    return [pytest.param(case, id=case["name"]) for case in cases]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "host"
    (r / STATE).mkdir(parents=True)
    return r


def bundle_with(release: object) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = json.dumps(release).encode()
        info = tarfile.TarInfo("release.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("case", load_cases("host_requests.json"))
def test_host_refuses_a_malformed_request(root: Path, case: dict[str, Any]) -> None:
    request = case.get("request")
    if "bundle" in case:
        (root / STATE / "incoming").mkdir()
        (root / STATE / "incoming/b.tar.gz").write_bytes(bundle_with(case["bundle"]))
        request = {"bundle": f"/{STATE}/incoming/b.tar.gz"}
    doc = call(root, case["command"], request)
    assert doc == {
        "ok": False,
        "step": "input",
        "message": case["error"],
        "warnings": [],
        "rolled_back_to": None,
        "rollback_errors": [],
    }
    assert not (root / STATE / "current").exists()
    assert not (root / STATE / "releases").exists() or not any(
        (root / STATE / "releases").iterdir()
    )


def test_host_refuses_arguments_that_are_not_json(root: Path) -> None:
    proc = run_program(root, "releases", "--args-b64", "bm90IGpzb24=")
    assert proc.returncode == 1 and proc.stderr == ""
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["step"] == "releases" and "Error" in doc["message"]


def plant_program(root: Path, reply: object, monkeypatch: pytest.MonkeyPatch) -> LocalTransport:
    """A host whose program at the content-addressed path answers `reply` to anything: a
    broken or hostile host (whose `sha256sum` lies, so the controller runs what it found)."""
    host_path, content = onhost_script()
    planted = root / host_path.lstrip("/")
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(f"import sys\nsys.stdout.write({json.dumps(json.dumps(reply))})\n")
    tools = root.parent / "lying-tools"
    tools.mkdir(exist_ok=True)
    (tools / "sha256sum").write_text(
        f"#!/bin/sh\necho '{hashlib.sha256(content).hexdigest()}  -'\n"
    )
    (tools / "sha256sum").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    return LocalTransport("mx1", root)


def run_controller(transport: LocalTransport, command: str) -> None:
    """The controller's own call for `command`, as `mailcfg` makes it."""
    act = Activation("postfix", "postfix", "reload")
    calls: dict[str, Callable[[], object]] = {
        "observe": lambda: observe_host(transport, FileTree({})),
        "apply": lambda: apply_plan(
            Plan("mx1", (), (act,), FileTree({}).digest, None),
            FileTree({}),
            transport,
            release_id="r1",
        ),
        "rollback": lambda: rollback_release(transport, activations=(act,)),
        "releases": lambda: list_releases(transport),
    }
    calls[command]()


@pytest.mark.parametrize("case", load_cases("controller_replies.json"))
def test_controller_refuses_a_malformed_reply(
    root: Path, case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = plant_program(root, case["reply"], monkeypatch)
    with pytest.raises(HostError) as refused:
        run_controller(transport, case["command"])
    assert type(refused.value) is HostError  # not an ApplyError: no step failed on the host
    assert str(refused.value) == case["error"]


def test_every_declaration_has_a_check() -> None:
    for declared in [*wire.REQUESTS.values(), *wire.REPLIES.values(), wire.BundleDoc]:
        wirecheck.make_check(declared)
    assert set(wire.REQUESTS) == set(wire.REPLIES)


def test_no_module_of_the_program_is_named_like_a_standard_module() -> None:
    names = {p.stem for p in HOSTSIDE.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert "onhost" in names and "wire" in names
    assert names & sys.stdlib_module_names == set()


def test_the_program_is_every_module_and_its_digest_covers_them(tmp_path: Path) -> None:
    host_path, content = onhost_script()
    members = zipfile.ZipFile(io.BytesIO(content)).namelist()
    modules = sorted(p.name for p in HOSTSIDE.glob("*.py"))
    assert members == ["__main__.py", *(f"mailcfg_onhost/{m}" for m in modules)]
    assert content == zip_program(HOSTSIDE)  # the same modules, the same bytes
    copy = tmp_path / "hostside"
    shutil.copytree(HOSTSIDE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert zip_program(copy) == content
    with (copy / "store.py").open("a") as f:
        f.write("\n")
    assert zip_program(copy) != content  # a change to any module names another program
    assert host_path.endswith(".pyz") and "/onhost-" in host_path


def test_nothing_beside_the_program_shadows_a_standard_module(root: Path) -> None:
    """A `json.py` in the working directory or beside the program is never imported."""
    trap = "raise SystemExit('shadowed: a module beside the program was imported')\n"
    (root.parent / "json.py").write_text(trap)
    (root.parent / "shipped").mkdir()
    (root.parent / "shipped" / "json.py").write_text(trap)
    doc = call(root, "releases", {})
    assert doc == {"ok": True, "current": None, "releases": []}


def test_the_program_runs_without_this_checkout(root: Path) -> None:
    """Only the zip: no `compiler` package, no virtualenv (the system's python3)."""
    probe = "import importlib.util, sys; print(importlib.util.find_spec('compiler') is None)"
    found = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=root.parent,
    )
    assert found.stdout == "True\n"
    assert call(root, "releases", {})["ok"]
