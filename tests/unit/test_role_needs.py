"""Roles' `needs:` (role.yml): the shipped roles' declarations rendered for a host, malformed
declarations refused with the file and the key (when the roles load, or when a host renders
them), and the names the controller accepts are the ones the on-host program accepts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compiler.push.hostside import wire
from compiler.render import needs as role_needs
from compiler.render.context import make_base_context
from compiler.render.resolve import resolve_host
from compiler.render.roles import (
    RoleError,
    default_roles_dir,
    load_roles,
    make_needs,
    role_defaults,
)
from compiler.render.targets import compile_host
from compiler.types import DirectoryNeed, GroupNeed, HostNeeds, UserNeed
from schemas.domain import Account, Domain
from schemas.inventory import HostSpec, Inventory
from tests.golden import cases as golden_cases

ROLES = load_roles(default_roles_dir())
HASH = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"


def needs_of(
    roles_dir: Path | None = None, host_roles: tuple[str, ...] = (), **paths: object
) -> HostNeeds:
    roles = ROLES if roles_dir is None else load_roles(roles_dir)
    spec = HostSpec(
        address="192.0.2.1",
        hostname="mx.example.com",
        policy={"paths": paths} if paths else {},
        **({"roles": list(host_roles)} if host_roles else {}),
    )
    domain = Domain(domain="example.com", accounts=[Account(name="a", password=HASH)])
    inv = Inventory(hosts={"mx": spec}, domains={"example.com": domain})
    cfg = resolve_host(inv, "mx", role_defaults(roles))
    return make_needs(roles, [r.value for r in spec.roles], make_base_context(cfg))


def test_the_shipped_roles_need_their_packages_users_and_directories() -> None:
    needs = needs_of(
        host_roles=("postfix", "dovecot", "agent"), mail_root="/srv/mail", vmail_uid=6000
    )
    assert needs.packages == (
        "python3",
        "python3-venv",
        "dovecot-core",
        "dovecot-imapd",
        "dovecot-pop3d",
        "dovecot-lmtpd",
        "dovecot-sieve",
        "postfix",
    )
    assert needs.debconf == ("postfix postfix/main_mailer_type select No configuration",)
    assert needs.groups == (GroupNeed("vmail", 5000),)
    assert needs.users == (
        UserNeed("mailcfg-agent", "postfix"),
        UserNeed("vmail", "vmail", 6000, "/srv/mail"),
    )
    assert needs.directories == (DirectoryNeed("/srv/mail", "vmail", "vmail", 0o750),)
    assert needs.units == ("dovecot.service", "postfix.service")


def test_a_host_gets_only_its_own_roles_needs() -> None:
    needs = needs_of(host_roles=("postfix",))
    assert (
        needs.packages == ("postfix",) and needs.users == () and needs.units == ("postfix.service",)
    )


def test_the_names_are_the_on_host_programs() -> None:
    for name in ("PACKAGE_NAME", "ACCOUNT_NAME", "UNIT_NAME"):
        assert getattr(role_needs, name).pattern == getattr(wire, name).pattern


def custom_roles(tmp_path: Path, needs_yaml: str) -> Path:
    """The shipped roles with the postfix role's `needs:` replaced."""
    roles = tmp_path / "roles"
    shutil.copytree(default_roles_dir(), roles)
    role_yml = roles / "postfix/role.yml"
    text = role_yml.read_text()
    role_yml.write_text(text[: text.index("\nneeds:\n") + 1] + needs_yaml)
    return roles


@pytest.mark.parametrize(
    ("needs_yaml", "error"),
    [
        ("needs: [postfix]\n", "needs: expected a mapping of packages, debconf"),
        ("needs: {pakages: [postfix]}\n", "needs: unknown keys ['pakages']"),
        ("needs: {packages: postfix}\n", "needs.packages: expected a list"),
        ("needs: {packages: ['']}\n", "needs.packages[0]: expected a non-empty string"),
        ("needs: {users: [{name: x}]}\n", "needs.users[0]: expected a mapping with group, name"),
        ("needs: {users: [{name: x, group: y, gecos: z}]}\n", "unknown keys ['gecos']"),
        ("needs: {groups: [{name: [x]}]}\n", "needs.groups[0].name: expected a string or a number"),
    ],
)
def test_a_malformed_declaration_is_refused_when_roles_load(
    tmp_path: Path, needs_yaml: str, error: str
) -> None:
    with pytest.raises(RoleError) as refused:
        load_roles(custom_roles(tmp_path, needs_yaml))
    assert "postfix/role.yml: " in str(refused.value) and error in str(refused.value)


@pytest.mark.parametrize(
    ("needs_yaml", "error"),
    [
        ("needs: {packages: ['postfix; rm -rf /']}\n", "is not a package name"),
        ("needs: {packages: ['--purge']}\n", "'--purge' is not a package name"),
        ("needs: {units: [postfix]}\n", "needs.units[0]: 'postfix' is not a systemd unit name"),
        ("needs: {users: [{name: '-o', group: x}]}\n", "needs.users[0].name: '-o' is not a user"),
        ("needs: {users: [{name: a, group: b, uid: -1}]}\n", "uid: '-1' is not a positive"),
        ("needs: {users: [{name: a, group: b, home: tmp}]}\n", "'tmp' is not an absolute, normal"),
        ("needs: {directories: [{path: /a/../etc}]}\n", "'/a/../etc' is not an absolute, normal"),
        ("needs: {directories: [{path: /srv, mode: '0999'}]}\n", "mode: '0999' is not an octal"),
        ("needs: {debconf: ['postfix']}\n", "'postfix' is not a debconf answer"),
        ("needs: {packages: ['{{ nonesuch.x }}']}\n", "needs.packages[0]: 'nonesuch' is undefined"),
        (
            "needs: {directories: [{path: /srv}, {path: /srv, mode: '0700'}]}\n",
            "needs.directories[1]: /srv is declared by another role differently",
        ),
    ],
)
def test_a_bad_rendered_value_is_refused_naming_the_key(
    tmp_path: Path, needs_yaml: str, error: str
) -> None:
    roles = custom_roles(tmp_path, needs_yaml)
    with pytest.raises(RoleError) as refused:
        needs_of(roles, host_roles=("postfix",))
    assert "roles/postfix/role.yml: needs." in str(refused.value)
    assert error in str(refused.value)


def test_two_roles_may_declare_the_same_need_alike(tmp_path: Path) -> None:
    roles = custom_roles(
        tmp_path, "needs: {packages: [python3], users: [{name: mailcfg-agent, group: postfix}]}\n"
    )
    needs = needs_of(roles, host_roles=("postfix", "agent"))
    assert needs.packages == ("python3", "python3-venv")
    assert needs.users == (UserNeed("mailcfg-agent", "postfix"),)


def test_agent_is_a_flag_that_any_role_may_set() -> None:
    where = Path("roles/x/role.yml")
    assert role_needs.parse_needs(where, {"agent": True}).agent
    assert not role_needs.parse_needs(where, {"packages": ["a1"]}).agent
    with pytest.raises(role_needs.NeedsError, match=r"needs\.agent: expected true or false"):
        role_needs.parse_needs(where, {"agent": "yes"})
    declared = [("a", role_needs.RoleNeeds()), ("b", role_needs.RoleNeeds(agent=True))]
    assert role_needs.render_needs(declared, lambda source, where: source).agent


def test_the_needs_of_roles_a_host_gets_from_its_policy_are_planned_too() -> None:
    """acme (from `tls.acme`) is not in the host's role list, but its certbot is needed."""
    inv, host = golden_cases.acme()
    _, target = compile_host(inv, ROLES, host)
    assert "certbot" in target.needs.packages and "postfix" in target.needs.packages
    inv, host = golden_cases.minimal()
    assert "certbot" not in compile_host(inv, ROLES, host)[1].needs.packages
