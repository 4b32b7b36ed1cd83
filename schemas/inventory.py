"""The inventory file (`mailcfg.yml`): schema version, hosts, groups, server policy.

Host and group `policy` entries are partial overrides (same keys as `ServerPolicy`), merged
defaults < groups (in listed order) < host by `compiler.resolve`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from schemas.common import DomainName, Frozen, Port, Token
from schemas.domain import Domain
from schemas.policy import ServerPolicy


class Role(StrEnum):
    POSTFIX = "postfix"
    DOVECOT = "dovecot"
    AGENT = "agent"


class TransportKind(StrEnum):
    LOCAL = "local"  # a directory root on this machine (demo, fast tests)
    SSH = "ssh"


class SshSpec(Frozen):
    user: Token = "root"
    port: Port = 22
    sudo: bool = False  # use sudo for a non-root user
    identity_file: Token | None = None
    known_hosts: Token | None = None  # default ~/.ssh/known_hosts
    trust_on_first_use: bool = False  # strict host-key checking unless explicitly relaxed
    connect_timeout: float = Field(default=10.0, gt=0)
    command_timeout: float = Field(default=120.0, gt=0)


class HostSpec(Frozen):
    address: Token
    hostname: DomainName  # myhostname / HELO
    transport: TransportKind = TransportKind.SSH
    root: Token | None = None  # local transport: directory standing for "/" of the host
    ssh: SshSpec = SshSpec()
    roles: list[Role] = Field(default_factory=lambda: [Role.POSTFIX, Role.DOVECOT, Role.AGENT])
    groups: list[Token] = Field(default_factory=list)
    domains: list[DomainName] | Literal["all"] = "all"
    policy: dict[str, Any] = Field(default_factory=dict)


class GroupSpec(Frozen):
    policy: dict[str, Any] = Field(default_factory=dict)


class InventoryFile(Frozen):
    """`mailcfg.yml` as written."""

    schema_version: Literal[1] = 1
    hosts: dict[Token, HostSpec]
    groups: dict[Token, GroupSpec] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)


class Inventory(Frozen):
    """The whole desired state: `mailcfg.yml` plus every domain file, validated and
    cross-checked."""

    schema_version: Literal[1] = 1
    hosts: dict[str, HostSpec]
    groups: dict[str, GroupSpec] = Field(default_factory=dict)
    policy: ServerPolicy = ServerPolicy()
    domains: dict[str, Domain] = Field(default_factory=dict)
