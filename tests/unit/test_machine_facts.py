"""The machine's facts as `observe` reports them: the real on-host program (the shipped zip, run
by the system's `python3 -I -S`) on a temporary root holding real files — `etc/os-release`,
`etc/passwd`, `etc/group`, a dpkg status database read by the real `dpkg-query` — and what
the controller makes of them: the release check (an unsupported release is an error naming
it, at plan time), the conflicts it refuses, and the host changes a plan shows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from compiler.connectors.local import LocalTransport
from compiler.push.hostcall import HostError
from compiler.push.hostneeds import machine_problems, needs_to_json, plan_host_changes
from compiler.push.observe import observe_host, parse_host_state
from compiler.types import (
    DirectoryNeed,
    FileTree,
    GroupNeed,
    HostChange,
    HostChangeKind,
    HostNeeds,
    UserNeed,
)
from tests.unit.onhost_program import STATE, call

NEEDS = HostNeeds(
    packages=("postfix", "dovecot-core", "hello"),
    debconf=("postfix postfix/main_mailer_type select No configuration",),
    groups=(GroupNeed("vmail", 5000), GroupNeed("mailcfg", None)),
    users=(UserNeed("vmail", "vmail", 5000, "/var/vmail"), UserNeed("nobody2", "nogroup")),
    directories=(DirectoryNeed("/var/vmail", "root", "root", 0o750), DirectoryNeed("/srv/none")),
    units=("postfix.service",),
)
DPKG_STATUS = """\
Package: postfix
Status: install ok installed
Version: 3.7.11-0+deb12u1
Architecture: amd64

Package: dovecot-core
Status: deinstall ok config-files
Version: 1:2.3.19.1+dfsg1-2.1+deb12u1
Architecture: amd64
"""


def make_root(tmp_path: Path, os_release: str) -> Path:
    root = tmp_path / "host"
    (root / STATE).mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text(os_release)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nvmail:x:5000:5000::/x:/y\n")
    (root / "etc/group").write_text("root:x:0:\nvmail:x:5000:\n")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    (root / "var/vmail").mkdir()
    os.chmod(root / "var/vmail", 0o755)
    return root


BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def observe_facts(root: Path, needs: HostNeeds = NEEDS) -> dict[str, Any]:
    doc = call(root, "observe", {"paths": {}, "sensitive": [], "needs": needs_to_json(needs)})
    assert doc["ok"], doc
    return doc


def test_facts_of_a_root_are_read_from_its_own_files(tmp_path: Path) -> None:
    root = make_root(tmp_path, BOOKWORM)
    system = observe_facts(root)["system"]
    assert system["os"] == {
        "id": "debian",
        "version_id": "12",
        "pretty_name": "Debian GNU/Linux 12 (bookworm)",
    }
    assert system["python"].startswith("3.") and system["machine"] == os.uname().machine
    # dpkg-query on the root's own database: only an installed package has a version.
    assert system["packages"] == {
        "postfix": "3.7.11-0+deb12u1",
        "dovecot-core": None,
        "hello": None,
    }
    assert system["groups"] == {"vmail": 5000, "mailcfg": None}
    assert system["users"] == {"vmail": {"uid": 5000, "gid": 5000}, "nobody2": None}
    assert system["directories"]["/srv/none"] is None
    assert system["directories"]["/var/vmail"]["directory"] is True
    assert system["directories"]["/var/vmail"]["mode"] == 0o755
    # A directory root runs no systemd of its own: no unit is asked about.
    assert system["systemd"] is False and system["units"] == {}


def test_a_request_without_needs_gets_no_facts(tmp_path: Path) -> None:
    root = make_root(tmp_path, BOOKWORM)
    assert call(root, "observe", {"paths": {}, "sensitive": [], "needs": None})["system"] is None


def test_plan_host_changes_from_the_facts(tmp_path: Path) -> None:
    state = parse_host_state(observe_facts(make_root(tmp_path, BOOKWORM)))  # type: ignore[arg-type]
    assert state.system is not None
    assert machine_problems(NEEDS, state.system) == []
    found = state.system.directories["/var/vmail"]
    assert found is not None  # owned by whoever runs the test
    assert plan_host_changes(NEEDS, state.system) == (
        HostChange(HostChangeKind.INSTALL, "dovecot-core"),
        HostChange(HostChangeKind.INSTALL, "hello"),
        HostChange(HostChangeKind.CREATE_GROUP, "mailcfg"),
        HostChange(HostChangeKind.CREATE_USER, "nobody2", "group nogroup"),
        HostChange(
            HostChangeKind.CHANGE_DIRECTORY,
            "/var/vmail",
            f"0755 {found.owner}:{found.group} -> 0750 root:root",
        ),
        HostChange(HostChangeKind.CREATE_DIRECTORY, "/srv/none", "0755 root:root"),
    )  # no unit: no systemd


@pytest.mark.parametrize(
    ("os_release", "named"),
    [
        ('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nID=debian\nVERSION_ID="11"\n', "11"),
        ('PRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\nVERSION_ID="22.04"\n', "22.04"),
        ('NAME="Fedora Linux"\nID=fedora\nVERSION_ID=40\n', "fedora 40"),
    ],
)
def test_an_unsupported_release_is_an_error_naming_it(
    tmp_path: Path, os_release: str, named: str
) -> None:
    root = make_root(tmp_path, os_release)
    with pytest.raises(HostError) as refused:
        observe_host(LocalTransport("mx1", root), FileTree({}), NEEDS)
    assert refused.value.step == "facts"
    message = refused.value.message
    assert named in message and "is not supported" in message
    assert "Debian 12 and 13, Ubuntu 24.04" in message


@pytest.mark.parametrize(
    "os_release",
    [BOOKWORM, "ID=debian\nVERSION_ID=13\n", "ID=ubuntu\nVERSION_ID='24.04'\n"],
)
def test_supported_releases(tmp_path: Path, os_release: str) -> None:
    state = observe_host(
        LocalTransport("mx1", make_root(tmp_path, os_release)), FileTree({}), NEEDS
    )
    assert state.system is not None


def test_no_os_release_at_all_is_an_unknown_release(tmp_path: Path) -> None:
    root = make_root(tmp_path, "")
    (root / "etc/os-release").unlink()
    with pytest.raises(HostError, match=r"unknown release \(no /etc/os-release\) is not supported"):
        observe_host(LocalTransport("mx1", root), FileTree({}), NEEDS)


def test_a_user_with_another_uid_is_refused_not_renumbered(tmp_path: Path) -> None:
    root = make_root(tmp_path, BOOKWORM)
    (root / "etc/passwd").write_text("vmail:x:999:995::/x:/y\n")
    needs = HostNeeds(users=(UserNeed("vmail", "vmail", 5000),))
    with pytest.raises(HostError, match="user vmail exists with uid 999, the inventory wants 5000"):
        observe_host(LocalTransport("mx1", root), FileTree({}), needs)


def test_the_host_refuses_a_need_that_could_be_an_option(tmp_path: Path) -> None:
    root = make_root(tmp_path, BOOKWORM)
    doc = needs_to_json(HostNeeds(packages=("--purge",)))
    reply = call(root, "observe", {"paths": {}, "sensitive": [], "needs": doc})
    assert reply["ok"] is False and reply["message"] == "not a package name: '--purge'"
