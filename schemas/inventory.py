"""The inventory file (`mailcfg.yml`): schema version, hosts, groups, server policy.

Host and group `policy` entries are partial overrides (same keys as `ServerPolicy`), merged
defaults < groups (in listed order) < host by `compiler.load.layers`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from schemas.common import DomainName, Frozen, Identifier, Port
from schemas.domain import Domain
from schemas.hostvalues import ControllerPath, HostAddress, HostRoot, KnownHostsPath, UserName
from schemas.policy import ServerPolicy


class Role(StrEnum):
    POSTFIX = "postfix"
    DOVECOT = "dovecot"
    AGENT = "agent"


class TransportKind(StrEnum):
    LOCAL = "local"  # a directory root on this machine (demo, fast tests)
    SSH = "ssh"


class SshSpec(Frozen):
    user: UserName = "root"
    port: Port = 22
    sudo: bool = False  # use sudo for a non-root user
    # Files of the controller, opened by paramiko (no shell): `~` and spaces are fine.
    identity_file: ControllerPath | None = None
    known_hosts: KnownHostsPath | None = None  # default ~/.ssh/known_hosts
    trust_on_first_use: bool = False  # strict host-key checking unless explicitly relaxed
    connect_timeout: float = Field(default=10.0, gt=0)
    command_timeout: float = Field(default=120.0, gt=0)


class HostSpec(Frozen):
    address: HostAddress  # an IP address or host name (SSH connects there)
    hostname: DomainName  # myhostname / HELO
    transport: TransportKind = TransportKind.SSH
    root: HostRoot | None = None  # local transport: directory standing for "/" of the host
    ssh: SshSpec = SshSpec()
    roles: list[Role] = Field(default_factory=lambda: [Role.POSTFIX, Role.DOVECOT, Role.AGENT])
    groups: list[Identifier] = Field(default_factory=list)
    domains: list[DomainName] | Literal["all"] = "all"
    policy: dict[str, Any] = Field(default_factory=dict)


class GroupSpec(Frozen):
    policy: dict[str, Any] = Field(default_factory=dict)


class InventoryFile(Frozen):
    """`mailcfg.yml` as written."""

    schema_version: Literal[1] = 1
    # Host and group names are also path components (`render --out DIR/<host>`).
    hosts: dict[Identifier, HostSpec]
    groups: dict[Identifier, GroupSpec] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)


class Inventory(Frozen):
    """The whole desired state: `mailcfg.yml` plus every domain file, validated and
    cross-checked."""

    schema_version: Literal[1] = 1
    hosts: dict[Identifier, HostSpec]
    groups: dict[Identifier, GroupSpec] = Field(default_factory=dict)
    policy: ServerPolicy = ServerPolicy()
    domains: dict[str, Domain] = Field(default_factory=dict)
