"""What a host's roles need on the machine against what observe found there: the releases
mailcfg supports, the conflicts it will not resolve by itself, and the host changes a plan
shows (install, create, enable). Pure; also the JSON codec of needs and facts
(`hostside/wire.py` declares both).

Supported: Debian 12 and 13, Ubuntu 24.04 (what `apt-get` and the roles' package names are
known to work on). A local root is no machine: it is asked for no facts and gets no host
changes, and its plan says so.
"""

from __future__ import annotations

from collections.abc import Iterator

from compiler.push.hostside.wire import NeedsDoc
from compiler.push.hostside.wire import SystemFacts as SystemFactsDoc
from compiler.types import (
    AgentChange,
    HostChange,
    HostChangeKind,
    HostNeeds,
    ObservedDirectory,
    SystemFacts,
)

SUPPORTED_RELEASES = {("debian", "12"), ("debian", "13"), ("ubuntu", "24.04")}
SUPPORTED_TEXT = "Debian 12 and 13, Ubuntu 24.04"
LOCAL_NOTE = "local host: packages, groups, users, directories and units are not managed"


def needs_to_json(needs: HostNeeds) -> NeedsDoc:
    return {
        "packages": list(needs.packages),
        "debconf": list(needs.debconf),
        "groups": [{"name": g.name, "gid": g.gid} for g in needs.groups],
        "users": [
            {"name": u.name, "uid": u.uid, "group": u.group, "home": u.home, "shell": u.shell}
            for u in needs.users
        ],
        "directories": [
            {"path": d.path, "owner": d.owner, "group": d.group, "mode": d.mode}
            for d in needs.directories
        ],
        "units": list(needs.units),
        "agent": needs.agent,
    }


def facts_from_json(doc: SystemFactsDoc) -> SystemFacts:
    return SystemFacts(
        os_id=doc["os"]["id"],
        os_version=doc["os"]["version_id"],
        os_name=doc["os"]["pretty_name"],
        python=doc["python"],
        machine=doc["machine"],
        packages=dict(doc["packages"]),
        groups=dict(doc["groups"]),
        users={n: None if u is None else (u["uid"], u["gid"]) for n, u in doc["users"].items()},
        directories={
            path: None
            if d is None
            else ObservedDirectory(d["directory"], d["mode"], d["owner"], d["group"])
            for path, d in doc["directories"].items()
        },
        systemd=doc["systemd"],
        units={name: (u["enabled"], u["active"]) for name, u in doc["units"].items()},
        agent_current=doc["agent"]["current"] if doc["agent"] else None,
        agents_installed=tuple(doc["agent"]["installed"]) if doc["agent"] else None,
    )


def describe_release(facts: SystemFacts) -> str:
    """`Debian GNU/Linux 12 (bookworm)`, or the ID and VERSION_ID where there is no name."""
    if facts.os_name:
        return facts.os_name
    if facts.os_id:
        return f"{facts.os_id} {facts.os_version}".strip()
    return "an unknown release (no /etc/os-release)"


def machine_problems(needs: HostNeeds, facts: SystemFacts) -> list[str]:
    """Why mailcfg will not change this machine: an unsupported release, or a need the
    machine contradicts (a user or group with another id, a file where a directory goes)."""
    if (facts.os_id, facts.os_version) not in SUPPORTED_RELEASES:
        return [
            f"{describe_release(facts)} is not supported (ID={facts.os_id or '?'}, "
            f"VERSION_ID={facts.os_version or '?'}): mailcfg installs and runs on "
            f"{SUPPORTED_TEXT}"
        ]
    problems = []
    for group in needs.groups:
        gid = facts.groups.get(group.name)
        if gid is not None and group.gid is not None and gid != group.gid:
            problems.append(
                f"group {group.name} exists with gid {gid}, the inventory wants {group.gid}: "
                "change one of them (mailcfg never renumbers a group)"
            )
    for user in needs.users:
        found = facts.users.get(user.name)
        if found is not None and user.uid is not None and found[0] != user.uid:
            problems.append(
                f"user {user.name} exists with uid {found[0]}, the inventory wants {user.uid}: "
                "change one of them (mailcfg never renumbers a user)"
            )
    for directory in needs.directories:
        seen = facts.directories.get(directory.path)
        if seen is not None and not seen.directory:
            problems.append(f"{directory.path} exists and is not a directory")
    return problems


def plan_host_changes(
    needs: HostNeeds, facts: SystemFacts, agent: AgentChange | None = None
) -> tuple[HostChange, ...]:
    """What apply will do to the machine, in the order it does it."""
    return tuple(_host_changes(needs, facts, agent))


def plan_agent_change(
    needs: HostNeeds, facts: SystemFacts, agent: tuple[str, str] | None
) -> AgentChange | None:
    """The controller's agent `(id, version)` where a role runs it and the host's differs."""
    if not needs.agent or agent is None or facts.agents_installed is None:
        return None
    if facts.agent_current == agent[0]:
        return None
    upload = agent[0] not in facts.agents_installed
    return AgentChange(agent[0], agent[1], facts.python, facts.machine, upload)


def _host_changes(
    needs: HostNeeds, facts: SystemFacts, agent: AgentChange | None
) -> Iterator[HostChange]:
    for package in needs.packages:
        if facts.packages.get(package) is None:
            yield HostChange(HostChangeKind.INSTALL, package)
    for group in needs.groups:
        if facts.groups.get(group.name) is None:
            detail = f"gid {group.gid}" if group.gid is not None else ""
            yield HostChange(HostChangeKind.CREATE_GROUP, group.name, detail)
    for user in needs.users:
        if facts.users.get(user.name) is None:
            uid = f"uid {user.uid}, " if user.uid is not None else ""
            yield HostChange(HostChangeKind.CREATE_USER, user.name, f"{uid}group {user.group}")
    for want in needs.directories:
        seen = facts.directories.get(want.path)
        after = _meta(want.mode, want.owner, want.group)
        if seen is None:
            yield HostChange(HostChangeKind.CREATE_DIRECTORY, want.path, after)
        elif (seen.mode, seen.owner, seen.group) != (want.mode, want.owner, want.group):
            before = _meta(seen.mode, seen.owner, seen.group)
            yield HostChange(HostChangeKind.CHANGE_DIRECTORY, want.path, f"{before} -> {after}")
    if facts.systemd:
        for unit in needs.units:
            enabled, active = facts.units.get(unit, ("not-found", "unknown"))
            if enabled not in ("enabled", "static", "alias", "indirect"):
                yield HostChange(HostChangeKind.ENABLE, unit, f"now {enabled}, {active}")
    if agent is not None:
        how = "install and run" if agent.upload else "run (installed)"
        was = facts.agent_current or "none"
        yield HostChange(HostChangeKind.AGENT, agent.id, f"{how}; now {was}")


def host_notes(needs: HostNeeds, facts: SystemFacts | None) -> tuple[str, ...]:
    """What a plan says about the machine beside its changes."""
    if facts is None:
        return (LOCAL_NOTE,) if needs != HostNeeds() else ()
    if needs.units and not facts.systemd:
        units = ", ".join(needs.units)
        return (f"no systemd on the host: {units} not enabled",)
    return ()


def _meta(mode: int, owner: str, group: str) -> str:
    return f"{mode:04o} {owner}:{group}"
