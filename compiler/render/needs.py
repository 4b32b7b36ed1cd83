"""A role's `needs:` in role.yml: what it needs on the machine besides its files, checked when
the role loads and rendered per host into one `HostNeeds`.

    needs:
      packages: [dovecot-core, dovecot-imapd]          # Debian package names
      debconf: ["postfix postfix/main_mailer_type select No configuration"]
      groups: [{name: "{{ paths.vmail_user }}", gid: "{{ paths.vmail_gid }}"}]
      users: [{name: "{{ paths.vmail_user }}", uid: "{{ paths.vmail_uid }}",
               group: "{{ paths.vmail_user }}", home: "{{ paths.mail_root }}"}]
      directories: [{path: "{{ paths.mail_root }}", owner: vmail, group: vmail, mode: "0750"}]
      units: [dovecot.service]                          # enabled where systemd runs
      agent: true                                       # runs mailcfg's agent (installed)

Every string is a Jinja2 template rendered with the host's context, like a file's path; what
it renders to is checked (a package, user, group or unit name as `hostside/wire.py` allows
it, an absolute normal path, an integer id, an octal mode), so a value from the inventory can
never become a second word or an option of the command that uses it. A unit listed here is
one a package ships (it is enabled before the release's files are staged); a unit the role
renders itself is enabled by the role's own `apply`. Roles are trusted code, but a malformed
declaration is refused with the file and the key, when the roles load or when a host renders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.types import DirectoryNeed, GroupNeed, HostNeeds, UserNeed

_KINDS = ("packages", "debconf", "groups", "users", "directories", "units")
_FIELDS: Mapping[str, tuple[set[str], set[str]]] = {  # kind → (required keys, optional keys)
    "groups": ({"name"}, {"gid"}),
    "users": ({"name", "group"}, {"uid", "home", "shell"}),
    "directories": ({"path"}, {"owner", "group", "mode"}),
}
# The names the on-host program accepts (`compiler/push/hostside/wire.py`, which render may not
# import; tests/unit/test_role_needs.py checks that both say the same).
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,100}")  # Debian policy 5.6.1
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
UNIT_NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,200}\.(service|socket|timer|path|target)")
_DEBCONF = re.compile(r"[a-z0-9][a-z0-9+.-]+ [^\s]+ [a-z]+ [^\n\r\0]*")
_OCTAL_MODE = re.compile(r"0?[0-7]{3,4}")

Render = Callable[[str, str], str]  # (template source, where) → text


class NeedsError(Exception):
    """A malformed `needs:` declaration or rendered value; the message names where."""


@dataclass(frozen=True, slots=True)
class RoleNeeds:
    """A role's `needs:` as declared: strings are templates; each entry of groups, users and
    directories a mapping of its keys to templates."""

    packages: tuple[str, ...] = ()
    debconf: tuple[str, ...] = ()
    groups: tuple[Mapping[str, str], ...] = ()
    users: tuple[Mapping[str, str], ...] = ()
    directories: tuple[Mapping[str, str], ...] = ()
    units: tuple[str, ...] = ()
    agent: bool = False


def parse_needs(where: Path, raw: object) -> RoleNeeds:
    """`needs:` of role.yml `where`, its shape checked (values are checked once rendered)."""
    if raw is None:
        return RoleNeeds()
    if not isinstance(raw, dict):
        raise NeedsError(f"{where}: needs: expected a mapping of {', '.join(_KINDS)}")
    unknown = raw.keys() - {*_KINDS, "agent"}
    if unknown:
        allowed = [*_KINDS, "agent"]
        raise NeedsError(f"{where}: needs: unknown keys {sorted(unknown)}; allowed {allowed}")
    if not isinstance(raw.get("agent", False), bool):
        raise NeedsError(f"{where}: needs.agent: expected true or false")
    parsed: dict[str, Any] = {"agent": raw.get("agent", False)}
    for kind in _KINDS:
        items = raw.get(kind) or []
        if not isinstance(items, list):
            raise NeedsError(f"{where}: needs.{kind}: expected a list")
        if kind in _FIELDS:
            parsed[kind] = tuple(_entry(where, kind, i, item) for i, item in enumerate(items))
        else:
            for i, item in enumerate(items):
                if not isinstance(item, str) or not item:
                    raise NeedsError(f"{where}: needs.{kind}[{i}]: expected a non-empty string")
            parsed[kind] = tuple(items)
    return RoleNeeds(**parsed)


def _entry(where: Path, kind: str, index: int, item: object) -> Mapping[str, str]:
    required, optional = _FIELDS[kind]
    at = f"{where}: needs.{kind}[{index}]"
    if not isinstance(item, dict) or not required <= item.keys():
        raise NeedsError(f"{at}: expected a mapping with {', '.join(sorted(required))}")
    unknown = item.keys() - required - optional
    if unknown:
        raise NeedsError(
            f"{at}: unknown keys {sorted(unknown)}; allowed {sorted(required | optional)}"
        )
    for key, value in item.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise NeedsError(f"{at}.{key}: expected a string or a number")
    return {key: str(value) for key, value in item.items()}


def render_needs(declared: Iterable[tuple[str, RoleNeeds]], render: Render) -> HostNeeds:
    """The needs of the roles `declared` ((role name, needs), in order) rendered with `render`
    and merged: a name or path two roles declare must be declared alike."""
    packages: dict[str, None] = {}
    debconf: dict[str, None] = {}
    groups: dict[str, GroupNeed] = {}
    users: dict[str, UserNeed] = {}
    directories: dict[str, DirectoryNeed] = {}
    units: dict[str, None] = {}
    agent = False
    for role, needs in declared:
        agent = agent or needs.agent
        at = f"roles/{role}/role.yml: needs"
        for i, source in enumerate(needs.packages):
            packages[_name(render, source, f"{at}.packages[{i}]", PACKAGE_NAME, "package")] = None
        for i, source in enumerate(needs.debconf):
            debconf[_debconf(render(source, f"{at}.debconf[{i}]"), f"{at}.debconf[{i}]")] = None
        for i, entry in enumerate(needs.groups):
            group = _group(render, entry, f"{at}.groups[{i}]")
            _merge(groups, group.name, group, f"{at}.groups[{i}]")
        for i, entry in enumerate(needs.users):
            user = _user(render, entry, f"{at}.users[{i}]")
            _merge(users, user.name, user, f"{at}.users[{i}]")
        for i, entry in enumerate(needs.directories):
            directory = _directory(render, entry, f"{at}.directories[{i}]")
            _merge(directories, directory.path, directory, f"{at}.directories[{i}]")
        for i, source in enumerate(needs.units):
            units[_name(render, source, f"{at}.units[{i}]", UNIT_NAME, "systemd unit")] = None
    return HostNeeds(
        packages=tuple(packages),
        debconf=tuple(debconf),
        groups=tuple(groups.values()),
        users=tuple(users.values()),
        directories=tuple(directories.values()),
        units=tuple(units),
        agent=agent,
    )


def _merge(found: dict[str, Any], key: str, value: object, where: str) -> None:
    if key in found and found[key] != value:
        raise NeedsError(f"{where}: {key} is declared by another role differently")
    found[key] = value


def _name(render: Render, source: str, where: str, pattern: re.Pattern[str], what: str) -> str:
    value = render(source, where)
    if not pattern.fullmatch(value):
        raise NeedsError(f"{where}: {value!r} is not a {what} name")
    return value


def _debconf(value: str, where: str) -> str:
    if not _DEBCONF.fullmatch(value):
        raise NeedsError(
            f"{where}: {value!r} is not a debconf answer ('<package> <question> <type> <value>')"
        )
    return value


def _path(render: Render, source: str, where: str) -> str:
    value = render(source, where)
    parts = value.split("/")
    if parts[0] != "" or any(p in ("", ".", "..") for p in parts[1:]) or not value.isprintable():
        raise NeedsError(f"{where}: {value!r} is not an absolute, normal path")
    return value


def _number(render: Render, source: str | None, where: str) -> int | None:
    if source is None:
        return None
    value = render(source, where)
    if not value.isdigit() or not 0 < int(value) < 2**31:
        raise NeedsError(f"{where}: {value!r} is not a positive integer id")
    return int(value)


def _group(render: Render, entry: Mapping[str, str], where: str) -> GroupNeed:
    return GroupNeed(
        name=_name(render, entry["name"], f"{where}.name", ACCOUNT_NAME, "group"),
        gid=_number(render, entry.get("gid"), f"{where}.gid"),
    )


def _user(render: Render, entry: Mapping[str, str], where: str) -> UserNeed:
    return UserNeed(
        name=_name(render, entry["name"], f"{where}.name", ACCOUNT_NAME, "user"),
        group=_name(render, entry["group"], f"{where}.group", ACCOUNT_NAME, "group"),
        uid=_number(render, entry.get("uid"), f"{where}.uid"),
        home=_path(render, entry.get("home", "/nonexistent"), f"{where}.home"),
        shell=_path(render, entry.get("shell", "/usr/sbin/nologin"), f"{where}.shell"),
    )


def _directory(render: Render, entry: Mapping[str, str], where: str) -> DirectoryNeed:
    mode = render(entry.get("mode", "0755"), f"{where}.mode")
    if not _OCTAL_MODE.fullmatch(mode):
        raise NeedsError(f"{where}.mode: {mode!r} is not an octal mode")
    return DirectoryNeed(
        path=_path(render, entry["path"], f"{where}.path"),
        owner=_name(render, entry.get("owner", "root"), f"{where}.owner", ACCOUNT_NAME, "user"),
        group=_name(render, entry.get("group", "root"), f"{where}.group", ACCOUNT_NAME, "group"),
        mode=int(mode, 8),
    )
