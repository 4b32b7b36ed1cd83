"""The inventory file (`mailcfg.yml`): schema version, hosts, groups, server policy.

Host and group `policy` entries are partial overrides (same keys as `ServerPolicy`), merged
defaults < groups (in listed order) < host by `compiler.load.layers`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from schemas.common import DomainName, Frozen, Identifier, Port
from schemas.dns import DnsSettings, PublicAddresses
from schemas.domain import Domain
from schemas.hostvalues import ControllerPath, HostAddress, HostRoot, KnownHostsPath, UserName
from schemas.policy import ServerPolicy
from schemas.web import WebSettings


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
    public_addresses: PublicAddresses = Field(
        default_factory=list,
        description="The addresses the internet reaches this host at (A/AAAA of `hostname`, "
        "its PTR, SPF); `mailcfg dns` prints their records and `mailcfg doctor` checks them.",
    )


class GroupSpec(Frozen):
    policy: dict[str, Any] = Field(default_factory=dict)


ALIAS_DOMAINS_DESCRIPTION = (
    "Alias domains: each alias (a domain without a domain file) delivers as the domain it maps "
    "to (a domain of the inventory): name@alias reaches name@domain for every enabled account "
    "and redirect of that domain, and its postmaster; other names are rejected at RCPT. "
    "Declared here, by the server "
    "team, not in a domain file: an alias domain captures the mail local users send to it "
    "and makes port 25 refuse its senders. Served by the hosts that serve its target."
)


class InventoryFile(Frozen):
    """`mailcfg.yml` as written."""

    schema_version: Literal[1] = 1
    # Host and group names are also path components (`render --out DIR/<host>`).
    hosts: dict[Identifier, HostSpec]
    groups: dict[Identifier, GroupSpec] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)
    alias_domains: dict[DomainName, DomainName] = Field(
        default_factory=dict, description=ALIAS_DOMAINS_DESCRIPTION
    )
    dns: DnsSettings = DnsSettings()
    web: WebSettings = WebSettings()


class Inventory(Frozen):
    """The whole desired state: `mailcfg.yml` plus every domain file, validated and
    cross-checked."""

    schema_version: Literal[1] = 1
    hosts: dict[Identifier, HostSpec]
    groups: dict[Identifier, GroupSpec] = Field(default_factory=dict)
    policy: ServerPolicy = ServerPolicy()
    domains: dict[str, Domain] = Field(default_factory=dict)
    # Alias domain → the domain of `domains` it delivers as (checked by the loader).
    alias_domains: dict[str, str] = Field(default_factory=dict)
    dns: DnsSettings = DnsSettings()
    web: WebSettings = WebSettings()
