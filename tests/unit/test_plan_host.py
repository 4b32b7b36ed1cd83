"""Host changes in a plan: what the roles need that the observed machine lacks, shown next to
the file diff in every format and counted by `has_changes` (a machine that has it all plans
nothing); a local root is no machine and its plan says so; and an apply carries the needs to
the host, whose provision step makes what is missing before the files are staged."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from compiler.connectors.local import LocalTransport
from compiler.push.apply import ApplyError, apply_plan, make_release_id
from compiler.push.hostneeds import LOCAL_NOTE
from compiler.push.observe import observe_host
from compiler.push.plan import make_plan
from compiler.push.show import format_plan, summarize_plan
from compiler.types import (
    Activation,
    AgentChange,
    DirectoryNeed,
    FileTree,
    GroupNeed,
    HostNeeds,
    HostState,
    ObservedDirectory,
    RenderedFile,
    SystemFacts,
    UserNeed,
)

NEEDS = HostNeeds(
    packages=("postfix", "hello"),
    groups=(GroupNeed("vmail", 5000),),
    users=(UserNeed("vmail", "vmail", 5000, "/var/vmail"),),
    directories=(DirectoryNeed("/var/vmail", "vmail", "vmail", 0o750),),
    units=("postfix.service",),
)
BARE = SystemFacts(
    "debian",
    "12",
    "Debian GNU/Linux 12 (bookworm)",
    packages={"postfix": None, "hello": None},
    groups={"vmail": None},
    users={"vmail": None},
    directories={"/var/vmail": ObservedDirectory(True, 0o755, "root", "root")},
    systemd=True,
    units={"postfix.service": ("not-found", "inactive")},
)
READY = SystemFacts(
    "debian",
    "12",
    "Debian GNU/Linux 12 (bookworm)",
    packages={"postfix": "3.7.11-0+deb12u1", "hello": "2.10-3"},
    groups={"vmail": 5000},
    users={"vmail": (5000, 5000)},
    directories={"/var/vmail": ObservedDirectory(True, 0o750, "vmail", "vmail")},
    systemd=True,
    units={"postfix.service": ("enabled", "active")},
)
MAIN_CF = RenderedFile("/etc/postfix/main.cf", b"myhostname = mx\n", role="postfix")


def test_a_bare_machine_plans_packages_users_directories_and_units() -> None:
    plan = make_plan("mx1", FileTree({}), HostState(None, system=BARE), (), NEEDS)
    assert plan.has_changes and plan.needs == NEEDS and plan.notes == ()
    assert summarize_plan(plan) == (
        "mx1: 0 to create, 0 to update, 0 to delete; 2 packages to install, 1 group to create, "
        "1 user to create, 1 directory to change, 1 unit to enable"
    )
    assert format_plan(plan, "diff").splitlines()[1:] == [
        "--- install package postfix",
        "--- install package hello",
        "--- create group vmail (gid 5000)",
        "--- create user vmail (uid 5000, group vmail)",
        "--- change directory /var/vmail (0755 root:root -> 0750 vmail:vmail)",
        "--- enable unit postfix.service (now not-found, inactive)",
    ]
    markdown = format_plan(plan, "markdown")
    assert "\n- install package hello\n" in markdown
    assert "\n- enable unit postfix.service (now not-found, inactive)\n" in markdown
    doc = json.loads(format_plan(plan, "json"))
    assert doc["has_changes"] is True and doc["manages_machine"] is True
    assert doc["host_changes"][1] == {
        "kind": "install",
        "subject": "hello",
        "detail": "",
        "does": "install package hello",
    }
    assert [c["kind"] for c in doc["host_changes"]] == [
        "install",
        "install",
        "create group",
        "create user",
        "change directory",
        "enable",
    ]


def test_host_changes_come_before_the_file_diff() -> None:
    plan = make_plan(
        "mx1", FileTree({MAIN_CF.path: MAIN_CF}), HostState(None, system=BARE), (), NEEDS
    )
    text = format_plan(plan, "diff")
    assert text.index("--- install package hello") < text.index("--- create /etc/postfix/main.cf")
    assert summarize_plan(plan).startswith("mx1: 1 to create, 0 to update, 0 to delete; 2 pack")


def test_a_machine_that_has_everything_plans_nothing() -> None:
    plan = make_plan("mx1", FileTree({}), HostState("r1", system=READY), (), NEEDS)
    assert not plan.has_changes and plan.host_changes == ()
    assert format_plan(plan, "diff") == "=== mx1: no changes\n"
    assert json.loads(format_plan(plan, "json"))["host_changes"] == []


def test_without_systemd_units_are_left_alone_and_the_plan_says_so() -> None:
    facts = replace(BARE, systemd=False, units={})
    plan = make_plan("mx1", FileTree({}), HostState(None, system=facts), (), NEEDS)
    assert all(c.kind.value != "enable" for c in plan.host_changes)
    assert plan.notes == ("no systemd on the host: postfix.service not enabled",)
    assert "(no systemd on the host: postfix.service not enabled)\n" in format_plan(plan, "diff")


def test_a_local_root_gets_no_host_changes_and_its_plan_says_so() -> None:
    tree = FileTree({MAIN_CF.path: MAIN_CF})
    plan = make_plan("mx1", tree, HostState(None), (), NEEDS)  # no facts: not a machine
    assert plan.host_changes == () and plan.needs is None
    assert plan.notes == (LOCAL_NOTE,)
    assert f"({LOCAL_NOTE})\n" in format_plan(plan, "diff")
    doc = json.loads(format_plan(plan, "json"))
    assert doc["manages_machine"] is False and doc["notes"] == [LOCAL_NOTE]
    # Nothing to change: nothing to say.
    assert format_plan(make_plan("mx1", FileTree({}), HostState(None), (), NEEDS), "diff") == (
        "=== mx1: no changes\n"
    )


@pytest.fixture
def _run_as_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


@pytest.mark.usefixtures("_run_as_a_host")
def test_apply_makes_the_directories_first_on_a_directory_root(tmp_path: Path) -> None:
    """The provision step on a directory root (which the controller never asks for: it is how
    the step is tested here): directories are made below the root before the files are staged;
    packages, users and units would act on this machine and are skipped with a warning."""
    root = tmp_path / "host"
    root.mkdir()
    host = LocalTransport("mx1", root)
    tree = FileTree({MAIN_CF.path: MAIN_CF})
    needs = HostNeeds(
        packages=("hello",),
        directories=(DirectoryNeed("/srv/mail/boxes", mode=0o710),),
    )
    plan = make_plan("mx1", tree, observe_host(host, tree), ())
    plan = replace(plan, needs=needs)  # as a machine's plan carries them
    warnings: list[str] = []
    apply_plan(
        plan,
        tree,
        host,
        release_id=make_release_id(datetime.now(UTC), tree.digest),
        warn=warnings.append,
    )
    made = root / "srv/mail/boxes"
    assert made.is_dir() and stat.S_IMODE(os.stat(made).st_mode) == 0o710
    assert (root / "etc/postfix/main.cf").read_bytes() == MAIN_CF.content
    assert warnings == [
        "packages, users, groups and units skipped: a directory root is not a machine"
    ]


@pytest.mark.usefixtures("_run_as_a_host")
def test_a_failing_provision_names_its_step_and_stages_nothing(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "srv").mkdir(parents=True)
    (root / "srv/mail").write_text("a file where the directory goes\n")
    host = LocalTransport("mx1", root)
    tree = FileTree({MAIN_CF.path: MAIN_CF})
    plan = replace(
        make_plan("mx1", tree, observe_host(host, tree), ()),
        needs=HostNeeds(directories=(DirectoryNeed("/srv/mail"),)),
    )
    with pytest.raises(ApplyError) as failed:
        apply_plan(plan, tree, host, release_id=make_release_id(datetime.now(UTC), tree.digest))
    assert failed.value.step == "directories"
    assert failed.value.message == "/srv/mail exists and is not a directory"
    assert not (root / "etc/postfix/main.cf").exists()
    assert not any((root / "var/lib/mailcfg/releases").iterdir())


AGENT_ROLE = Activation("agent", "mailcfg-agent", "restart", apply=("systemctl restart x",))
CONTROLLER_AGENT = ("1.2.0-0123456789ab", "1.2.0")


def test_a_host_without_the_controllers_agent_plans_it_and_the_agents_restart() -> None:
    needs = replace(NEEDS, agent=True)
    facts = replace(READY, python="3.11.2", machine="x86_64", agents_installed=())
    plan = make_plan(
        "mx1", FileTree({}), HostState("r1", system=facts), (AGENT_ROLE,), needs, CONTROLLER_AGENT
    )
    assert plan.agent == AgentChange("1.2.0-0123456789ab", "1.2.0", "3.11.2", "x86_64", True)
    assert plan.activations == (AGENT_ROLE,) and plan.has_changes
    assert "--- run agent 1.2.0-0123456789ab (install and run; now none)" in format_plan(plan)
    assert summarize_plan(plan) == (
        "mx1: 0 to create, 0 to update, 0 to delete; 1 agent change; "
        "then restart mailcfg-agent (a new agent)"
    )

    # Installed already (a rollback left it): run it, nothing to upload.
    facts = replace(facts, agent_current="1.1.0-aaaaaaaaaaaa", agents_installed=(plan.agent.id,))
    plan = make_plan(
        "mx1", FileTree({}), HostState("r1", system=facts), (), needs, CONTROLLER_AGENT
    )
    assert plan.agent is not None and not plan.agent.upload
    assert "(run (installed); now 1.1.0-aaaaaaaaaaaa)" in format_plan(plan, "diff")

    # The same agent: nothing to do; a host whose roles run no agent is never asked.
    facts = replace(facts, agent_current=CONTROLLER_AGENT[0])
    plan = make_plan(
        "mx1", FileTree({}), HostState("r1", system=facts), (), needs, CONTROLLER_AGENT
    )
    assert not plan.has_changes and plan.agent is None
    plan = make_plan(
        "mx1", FileTree({}), HostState("r1", system=READY), (), NEEDS, CONTROLLER_AGENT
    )
    assert plan.agent is None
    # A directory root reports no agent facts: nothing is installed below it.
    plan = make_plan(
        "mx1", FileTree({}), HostState("r1", system=READY), (), needs, CONTROLLER_AGENT
    )
    assert plan.agent is None and not plan.has_changes
