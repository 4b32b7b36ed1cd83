"""The agent as a host installs it without network: this project's reproducible agent wheel and
a wheelhouse of its dependencies made for this machine's system Python (3.11 on x86_64 here),
installed into a virtualenv by the system's `python3 -m venv` and `pip install --no-index`;
the venv's `mailcfg-agent` then serves and answers `ping`. Making the wheelhouse needs the
package index once (later runs use the cache); without it the test is skipped, saying so."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from compiler.push.agentdist import (
    AgentDistError,
    Wheelhouse,
    build_agent_wheel,
    make_wheelhouse,
    source_root,
)
from tests.helpers import wait_for_path
from tests.runtime.policy_fixtures import BASE

SYSTEM_PYTHON = "/usr/bin/python3"
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


VERSION = "import sys; print('.'.join(map(str, sys.version_info[:3])))"


def system_python() -> str:
    return subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", "-c", VERSION], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_agent_wheel_is_reproducible_and_holds_the_agent_only() -> None:
    name, first = build_agent_wheel(source_root())
    assert build_agent_wheel(source_root()) == (name, first)
    assert name.startswith("mailcfg-") and name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(io.BytesIO(first)) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert wheel.read(entry_points) == (
            b"[console_scripts]\nmailcfg-agent = runtime.cli:main\n"
        )
    assert "runtime/cli.py" in names and "schemas/agent.py" in names
    assert not any(n.startswith("compiler/") for n in names)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    cache = tmp_path_factory.mktemp("cache")
    try:
        return make_wheelhouse(system_python(), os.uname().machine, cache)
    except AgentDistError as exc:
        pytest.skip(f"no package index reachable to make the agent's wheelhouse: {exc}")


def test_the_wheelhouse_is_cached(wheelhouse: Wheelhouse) -> None:
    cache = wheelhouse.directory.parents[1]
    made = {p.name: p.stat().st_ino for p in wheelhouse.directory.iterdir()}
    # Offline: the cached wheelhouse is found without pip (no index to reach).
    env = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        again = make_wheelhouse(wheelhouse.python, wheelhouse.machine, cache)
    assert again == wheelhouse
    assert {p.name: p.stat().st_ino for p in wheelhouse.directory.iterdir()} == made
    assert wheelhouse.wheels[0].startswith("mailcfg-")
    # Markers are the host's: redis needs async-timeout below Python 3.11.3 (Debian 12 has
    # 3.11.2), whatever Python makes the wheelhouse.
    needs_timeout = tuple(map(int, wheelhouse.python.split("."))) < (3, 11, 3)
    assert any(w.startswith("async_timeout-") for w in wheelhouse.wheels) == needs_timeout


def test_offline_without_a_cache_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(AgentDistError) as refused:
        make_wheelhouse("3.11.2", "x86_64", tmp_path / "cache")
    message = str(refused.value)
    assert "cannot make the agent's wheelhouse for Python 3.11.2 on x86_64" in message
    assert "offline" in message and "none is cached in" in message


def test_a_venv_from_the_wheelhouse_serves_and_answers_ping(
    wheelhouse: Wheelhouse, tmp_path: Path
) -> None:
    venv = tmp_path / "opt/mailcfg/agent" / wheelhouse.agent_id
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, env=HOST_ENV)
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--no-index", "--disable-pip-version-check",
         "--find-links", str(wheelhouse.directory), f"mailcfg=={wheelhouse.version}"],
        check=True, env=HOST_ENV, capture_output=True,
    )  # fmt: skip
    agent = venv / "bin/mailcfg-agent"
    assert agent.read_text().splitlines()[0] == f"#!{venv}/bin/python3"  # no /usr/bin/env
    help_text = subprocess.run(
        [str(agent), "--help"], capture_output=True, text=True, check=True, env=HOST_ENV
    ).stdout
    assert "serve" in help_text and "ping" in help_text
    sock = tmp_path / "policy.sock"
    config = tmp_path / "agent.json"
    config.write_text(
        json.dumps(
            {
                **BASE,
                "listen": f"unix:{sock}",
                "state": f"sqlite:///{tmp_path}/state.db",
                "state_dir": str(tmp_path),
                "logs": [],
                "postfix_config_dir": str(tmp_path / "no-postfix"),
            }
        )
    )
    with (tmp_path / "agent.err").open("w") as err:
        served = subprocess.Popen(
            [str(agent), "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, env=HOST_ENV,
        )  # fmt: skip
    try:
        alive = wait_for_path(
            sock, time.monotonic() + 20, while_alive=lambda: served.poll() is None
        )
        assert alive, (tmp_path / "agent.err").read_text()
        ping = subprocess.run(
            [str(agent), "ping", "--config", str(config), "--wait", "10"],
            capture_output=True, text=True, check=False, env=HOST_ENV,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        served.terminate()
        served.wait(timeout=10)
