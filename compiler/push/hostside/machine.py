"""The machine behind a host's "/": its release, and the packages, groups, users, directories
and units its roles need (`wire.NeedsDoc`), as `observe` reports them (`wire.SystemFacts`).

On "/" users and groups come from the system's databases (`pwd`, `grp`: NSS, so LDAP users
count), packages from `dpkg-query`, units from `systemctl` where systemd runs. On a directory
root (tests; the controller never asks a local root for facts) the root's own files are read
instead: `etc/os-release`, `etc/passwd`, `etc/group`, `var/lib/dpkg` — and no unit is asked
about, since `systemctl` would answer for this machine.

Every name a need carries is checked here before it reaches a command's argv (`check_needs`):
the controller validated them already, and a name starting with `-` must never become an
option.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import subprocess
import sys

from .agentinstall import read_agent_facts
from .fileops import name_of_gid, name_of_uid
from .hostroot import Host, StepFailed
from .wire import (
    ACCOUNT_NAME,
    PACKAGE_NAME,
    UNIT_NAME,
    DirectoryFact,
    NeedsDoc,
    OsRelease,
    SystemFacts,
    UnitFact,
    UserFact,
)

QUERY_TIMEOUT = 60.0


def check_needs(needs: NeedsDoc) -> None:
    """Refuse a need whose name could be anything but that name on a command line."""
    for name in needs["packages"]:
        _check(PACKAGE_NAME, name, "package")
    for line in needs["debconf"]:
        _check(PACKAGE_NAME, line.split(" ", 1)[0], "debconf package")
        if "\n" in line or "\0" in line:
            raise StepFailed("input", f"debconf answer {line[:60]!r}: one line only")
    for group in needs["groups"]:
        _check(ACCOUNT_NAME, group["name"], "group")
    for user in needs["users"]:
        _check(ACCOUNT_NAME, user["name"], "user")
        _check(ACCOUNT_NAME, user["group"], "group")
        for path in (user["home"], user["shell"]):
            _check_path(path)
    for directory in needs["directories"]:
        _check(ACCOUNT_NAME, directory["owner"], "owner")
        _check(ACCOUNT_NAME, directory["group"], "group")
        _check_path(directory["path"])
    for unit in needs["units"]:
        _check(UNIT_NAME, unit, "unit")


def _check_path(path: str) -> None:
    parts = path.split("/")
    if parts[0] != "" or any(p in ("", ".", "..") for p in parts[1:]) or "\0" in path:
        raise StepFailed("input", f"not an absolute, normal path: {path!r}")


def _check(pattern: re.Pattern[str], value: str, what: str) -> None:
    if not pattern.fullmatch(value):
        raise StepFailed("input", f"not a {what} name: {value!r}")


def observe_system(host: Host, needs: NeedsDoc) -> SystemFacts:
    """What `needs` finds on the machine now."""
    check_needs(needs)
    systemd = host.is_system and os.path.isdir("/run/systemd/system")
    return {
        "os": read_os_release(host),
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "machine": os.uname().machine,
        "packages": installed_versions(host, needs["packages"]),
        "groups": {g["name"]: find_group(host, g["name"]) for g in needs["groups"]},
        "users": {u["name"]: find_user(host, u["name"]) for u in needs["users"]},
        "directories": {d["path"]: find_directory(host, d["path"]) for d in needs["directories"]},
        "systemd": systemd,
        "units": {u: unit_state(u) for u in needs["units"]} if systemd else {},
        # A directory root is no machine: no agent is installed below it.
        "agent": read_agent_facts(host) if needs["agent"] and host.is_system else None,
    }


def read_os_release(host: Host) -> OsRelease:
    """ID, VERSION_ID and PRETTY_NAME of `etc/os-release` (else `usr/lib/os-release`, as
    os-release(5) says); empty strings when neither exists."""
    fields: dict[str, str] = {}
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(host.path(candidate), encoding="utf-8", errors="replace") as f:
                text = f.read(65536)
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in ("ID", "VERSION_ID", "PRETTY_NAME"):
                fields[key.strip()] = _unquote(value.strip())
        break
    return {
        "id": fields.get("ID", ""),
        "version_id": fields.get("VERSION_ID", ""),
        "pretty_name": fields.get("PRETTY_NAME", ""),
    }


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return re.sub(r"\\(.)", r"\1", value)


def installed_versions(host: Host, packages: list[str]) -> dict[str, str | None]:
    """Each package's installed version (None: not installed, or no dpkg at all)."""
    found: dict[str, str | None] = dict.fromkeys(packages)
    if not packages:
        return found
    argv = ["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Status}\n"]
    if not host.is_system:
        argv.append("--admindir=" + host.path("/var/lib/dpkg"))
    try:
        proc = subprocess.run(
            [*argv, "--", *packages],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=QUERY_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return found  # no dpkg: the release check refuses such a host anyway
    # Exit 1 with "no packages found matching" on stderr for names dpkg never heard of.
    for line in proc.stdout.decode(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] in found and parts[2] == "installed":
            found[parts[0]] = parts[1]
    return found


def find_group(host: Host, name: str) -> int | None:
    if host.is_system:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None
    for fields in _database(host, "/etc/group"):
        if fields[0] == name and len(fields) > 2 and fields[2].isdigit():
            return int(fields[2])
    return None


def find_user(host: Host, name: str) -> UserFact | None:
    if host.is_system:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return {"uid": entry.pw_uid, "gid": entry.pw_gid}
    for fields in _database(host, "/etc/passwd"):
        if fields[0] == name and len(fields) > 3 and fields[2].isdigit() and fields[3].isdigit():
            return {"uid": int(fields[2]), "gid": int(fields[3])}
    return None


def _database(host: Host, path: str) -> list[list[str]]:
    """The colon-separated lines of a directory root's `etc/passwd` or `etc/group`."""
    try:
        with open(host.path(path), encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if ":" in line]
    except OSError:
        return []


def find_directory(host: Host, path: str) -> DirectoryFact | None:
    try:
        st = os.lstat(host.path(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return {
        "directory": stat.S_ISDIR(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "owner": name_of_uid(st.st_uid),
        "group": name_of_gid(st.st_gid),
    }


def unit_state(unit: str) -> UnitFact:
    return {
        "enabled": _systemctl("is-enabled", unit) or "not-found",
        "active": _systemctl("is-active", unit) or "unknown",
    }


def _systemctl(verb: str, unit: str) -> str:
    """The one word `systemctl is-enabled|is-active` prints (it exits non-zero for every
    answer but the positive one, so the exit code is not the answer)."""
    try:
        proc = subprocess.run(
            ["systemctl", verb, "--", unit],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=QUERY_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    words = proc.stdout.decode(errors="replace").split()
    return words[0] if words else ""
