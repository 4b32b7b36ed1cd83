"""Packages through a real SSH host: the plan reads the machine's facts (this machine: Debian 12
with Postfix and Dovecot installed; the namespace host shares its filesystem, so its dpkg
database too) and plans no package, user or directory for a host that has them all; a role
that needs one more package (`hello`, tiny and harmless, added to the test's own copy of the
roles, never to the shipped ones) gets it installed by `apply` with `apt-get`, and the next
plan says "no changes".

The namespace host has no route to the Debian archive, so the package is first downloaded on
the runner into apt's cache (`apt-get install --download-only`), which the host shares: its
`apt-get install` then needs no network, and the package lists already have a candidate, so
no `apt-get update` runs. Without the archive the test is skipped, saying so. `hello` is
removed again at the end (only when this test installed it).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import NetnsLab
from test_push import Fleet, recap_line

pytestmark = pytest.mark.e2e

PACKAGE = "hello"


def installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status}", package],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout == "installed"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, sshd, apt-get)")
    if installed(PACKAGE):
        pytest.skip(f"{PACKAGE} is installed on this machine already: nothing to install")
    with NetnsLab() as lab:
        fleet = Fleet(lab, tmp_path_factory.mktemp("packages"), names=("a",))
        # The mail root as the dovecot role wants it, so only the package is missing.
        (fleet.hosts["a"].base / "vmail").chmod(0o750)
        try:
            yield fleet
        finally:
            if installed(PACKAGE):
                subprocess.run(["apt-get", "-q", "-y", "remove", PACKAGE], check=False)


def host_changes(fleet: Fleet) -> list[dict[str, str]]:
    plan = fleet.mailcfg("plan", "--format", "json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    (doc,) = json.loads(plan.stdout)["plans"]
    assert doc["manages_machine"] is True
    changes: list[dict[str, str]] = doc["host_changes"]
    return changes


def test_a_host_with_every_package_plans_none(fleet: Fleet) -> None:
    assert host_changes(fleet) == []
    plan = fleet.mailcfg("plan")
    # The namespace host runs no systemd: units are left alone, and the plan says so.
    assert "(no systemd on the host: dovecot.service, postfix.service not enabled)" in plan.stdout


def test_apply_installs_a_missing_package_with_apt(fleet: Fleet) -> None:
    download = subprocess.run(
        ["apt-get", "-q", "-y", "install", "--download-only", PACKAGE],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )  # fmt: skip
    if download.returncode != 0:
        pytest.skip(f"the Debian archive is not reachable from this machine: {download.stderr}")
    role_yml = Path(fleet.roles) / "postfix/role.yml"
    role_yml.write_text(
        role_yml.read_text().replace("packages: [postfix]", "packages: [postfix, hello]")
    )
    assert host_changes(fleet) == [
        {"kind": "install", "subject": PACKAGE, "detail": "", "does": f"install package {PACKAGE}"}
    ]
    result = fleet.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert recap_line(result.stdout, "a").split()[1] == "changed", result.stdout
    assert installed(PACKAGE)
    plan = fleet.mailcfg("plan", "--detailed-exitcode")
    assert plan.returncode == 0 and "no changes" in plan.stdout, plan.stdout + plan.stderr
