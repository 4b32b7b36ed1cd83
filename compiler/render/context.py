"""The template context of a host: what role templates, file paths and commands may use.

One place computes every derived value (listener addresses, policy hooks, agent paths) so that
templates only lay text out and `compiler.render.roles` formats commands from the same resolved
paths the files were rendered with. The domain-sized parts (tables, autoresponder scripts,
agent.json's accounts and redirects) come from the fragment join, `compiler.render.join`; this
module only puts them in.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from compiler.render.agentconfig import host_port, probe_address, render_agent_config
from compiler.render.filtering import filter_role_names, make_filter_context
from compiler.render.join import DomainSetCache, make_domain_set_data
from compiler.render.resolve import HostConfig
from schemas.inventory import Role
from schemas.policy import ACME_LINEAGE, ACME_LIVE_DIR, FailAction, Listener

POSTFIX_MAPS = ("virtual_mailbox_domains", "virtual_mailbox_maps", "virtual_alias_maps",
                "sender_login_maps")  # fmt: skip
AGENT_CONFIG_NAME = "agent.json"
# Policy service request limits. Postfix 3.7 answers `default_action` once they are used up,
# also when the socket does not exist (agent down): try_limit attempts, 1 s apart, then the
# fail-safe action (tests/e2e/test_mailflow.py shows both DUNNO and DEFER_IF_PERMIT).
POLICY_TIMEOUT = "10s"
POLICY_TRY_LIMIT = 2
# The role that obtains the certificate: rendered for a host whose policy has `tls.acme`
# (not listed in `roles`: the certificate is part of the TLS policy, not a service).
ACME_ROLE = "acme"
# Where certbot's renewal hook finds the on-host program (`recover` keeps this copy current).
ONHOST_PROGRAM = "/var/lib/mailcfg/onhost.pyz"


def postfix_inet(listener: Listener) -> str:
    """master.cf service name of an inet listener: `port`, `addr:port` or `[v6]:port`."""
    if listener.address == "all":
        return str(listener.port)
    address = f"[{listener.address}]" if ":" in listener.address else listener.address
    return f"{address}:{listener.port}"


def dovecot_address(listener: Listener) -> str:
    return "*, ::" if listener.address == "all" else listener.address


def dovecot_port(listener: Listener) -> int:
    """Port 0 switches a Dovecot inet_listener off."""
    return listener.port if listener.enabled else 0


def make_policy_hook(socket: str, fail_action: FailAction) -> str:
    return (
        f"check_policy_service {{ unix:{socket}, default_action={fail_action.value}, "
        f"timeout={POLICY_TIMEOUT}, try_limit={POLICY_TRY_LIMIT} }}"
    )


def _first_enabled(*listeners: Listener) -> tuple[str, int] | None:
    for listener in listeners:
        if listener.enabled:
            return probe_address(listener), listener.port
    return None


@dataclass(frozen=True, slots=True)
class ExternalSenderClass:
    """A served domain's `external_senders` entry as main.cf lays it out: a restriction class
    `name` that permits a sender of `domain` when the client is in one of `networks`."""

    name: str
    domain: str
    networks: tuple[str, ...]


def make_external_senders(cfg: HostConfig) -> list[ExternalSenderClass]:
    """The `external_senders` entries of the domains `cfg` serves (others mean nothing on
    this host: it refuses no sender of theirs), by domain, one restriction class each."""
    served = set(cfg.domain_names)
    entries = sorted(
        (e for e in cfg.policy.external_senders if e.domain in served), key=attrgetter("domain")
    )
    return [
        ExternalSenderClass(f"mailcfg_external_senders_{i}", entry.domain, tuple(entry.networks))
        for i, entry in enumerate(entries, start=1)
    ]


def host_role_names(cfg: HostConfig) -> list[str]:
    """The roles whose files the host gets, sorted: its spec's, `acme` with `tls.acme`, and
    beside postfix the filtering roles its policy asks for (`compiler.render.filtering`)."""
    names = {str(role) for role in cfg.spec.roles}
    if cfg.policy.tls.acme is not None:
        names.add(ACME_ROLE)
    if Role.POSTFIX in cfg.spec.roles:
        names |= filter_role_names(cfg)
    return sorted(names)


@dataclass(frozen=True, slots=True)
class AcmeRequest:
    """What the acme role asks certbot for: the lineage, its names (the hostname first), and
    the roles its renewal hook reloads (those of the host that read the TLS pair)."""

    lineage: str
    live_dir: str
    names: tuple[str, ...]
    reload_roles: tuple[str, ...]
    program: str = ONHOST_PROGRAM


def make_acme_request(cfg: HostConfig) -> AcmeRequest | None:
    acme = cfg.policy.tls.acme
    if acme is None:
        return None
    hostname = cfg.spec.hostname
    names = (hostname, *(n for n in acme.names if n != hostname))
    readers = tuple(sorted({str(r) for r in cfg.spec.roles} & {Role.DOVECOT, Role.POSTFIX}))
    return AcmeRequest(ACME_LINEAGE, ACME_LIVE_DIR, names, readers)


def make_base_context(cfg: HostConfig) -> dict[str, Any]:
    """The context without the account-sized parts (tables, agent config, autoresponders):
    enough for role.yml paths and activation commands, cheap for any inventory size."""
    policy = cfg.policy
    paths = policy.paths
    ls = policy.listeners
    has_agent = Role.AGENT in cfg.spec.roles
    protocols = []
    if ls.imap.enabled or ls.imaps.enabled:
        protocols.append("imap")
    if ls.pop3.enabled or ls.pop3s.enabled:
        protocols.append("pop3")
    protocols.append("lmtp")
    socket_dir = posixpath.dirname(paths.agent_socket)
    runtime_directory = socket_dir[len("/run/") :] if socket_dir.startswith("/run/") else None
    state_directory = (
        paths.agent_state_dir[len("/var/lib/") :]
        if paths.agent_state_dir.startswith("/var/lib/")
        else None
    )
    rw_paths = [] if state_directory else [paths.agent_state_dir]
    if runtime_directory is None:
        rw_paths.append(socket_dir)
    return {
        "cfg": cfg,
        "policy": policy,
        "paths": paths,
        "ls": ls,
        "maps": POSTFIX_MAPS,
        "has_agent": has_agent,
        "inbound_policy": make_policy_hook(paths.agent_socket, policy.policy_fail_action_inbound),
        "outbound_policy": make_policy_hook(paths.agent_socket, policy.policy_fail_action_outbound),
        "extra_main": sorted(policy.postfix_main.items()),
        "external_senders": make_external_senders(cfg),
        # Alias domains are virtual_alias_domains, never virtual_mailbox_domains.
        "alias_domains": list(cfg.alias_domains),
        "dovecot_protocols": protocols,
        # Every plain SMTP listener: each smtpd reads its own -o overrides only when a client
        # connects, so a bad submission-only setting shows only on 587/2525.
        "smtp_probes": [
            (probe_address(listener), listener.port)
            for listener in (ls.smtp, ls.submission, ls.submission_alt)
            if listener.enabled
        ],
        "imap_probe": _first_enabled(ls.imap, ls.pop3),
        "agent_config_path": posixpath.join(paths.agent_config_dir, AGENT_CONFIG_NAME),
        "acme": make_acme_request(cfg),
        # The CA bundle certbot's renewals trust, as a list for role.yml's `each` (a file
        # only when there is one).
        "acme_trust": [a.ca_bundle] if (a := policy.tls.acme) and a.ca_bundle else [],
        "runtime_directory": runtime_directory,
        "state_directory": state_directory,
        "agent_rw_paths": rw_paths,
        "smtp_submit": host_port(*(_first_enabled(ls.smtp) or ("127.0.0.1", 25))),
        "inet": postfix_inet,
        "address": dovecot_address,
        "port": dovecot_port,
        **make_filter_context(cfg),
    }


def make_context(cfg: HostConfig, cache: DomainSetCache | None = None) -> dict[str, Any]:
    """The full template context of `cfg`; `cache` shares domain-derived data between hosts."""
    derived = cache.get(cfg) if cache is not None else make_domain_set_data(cfg)
    context = make_base_context(cfg)
    context["tables"] = derived.tables
    context["autoresponders"] = derived.autoresponders
    context["agent_json"] = (
        render_agent_config(cfg, derived.agent_text) if context["has_agent"] else ""
    )
    return context
