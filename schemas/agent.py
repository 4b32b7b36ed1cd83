"""The agent's config file (`agent.json`): everything the runtime needs, rendered by the compiler.

This is the only channel from compiler to agent. The agent validates it with `AgentConfig`
(`AgentConfig.model_validate_json`) and never reads the inventory. Its fields use the inventory's
types, so a value the agent would refuse at start is refused by `mailcfg validate` first.
"""

from __future__ import annotations

import posixpath

from pydantic import Field

from schemas.common import Address, DomainName, Frozen, Identifier, ReplyText, SafeText
from schemas.domain import SenderList
from schemas.hostvalues import AbsPath, PolicyListen, SmtpEndpoint, StateDsn
from schemas.policy import FailAction, FilterLine, Limits, Paths, SpamPolicy

AGENT_CONFIG_NAME = "agent.json"
# Where the agent role installs the config when `paths.agent_config_dir` keeps its default:
# what the agent's commands and the compiler's `stats` read unless told otherwise.
DEFAULT_AGENT_CONFIG = posixpath.join(
    Paths.model_fields["agent_config_dir"].default, AGENT_CONFIG_NAME
)

AGENT_CONFIG_VERSION = 1


class AgentAccount(Frozen):
    """One local mailbox account as the agent sees it; `limits` are fully resolved."""

    enabled: bool = True
    whitelist: SenderList = SenderList()
    blacklist: SenderList = SenderList()
    limits: Limits


class AgentConfig(Frozen):
    version: int = AGENT_CONFIG_VERSION
    host: Identifier
    hostname: DomainName
    listen: PolicyListen  # "unix:/run/mailcfg/policy.sock" or "tcp:127.0.0.1:10031"
    state: StateDsn  # "sqlite:///path/state.db" or "redis://host:port/db"
    local_domains: list[DomainName]
    accounts: dict[Address, AgentAccount] = Field(default_factory=dict)
    redirects: dict[Address, list[Address]] = Field(default_factory=dict)
    # A local domain's catch-all: where mail to its unknown addresses goes (`Domain.catch_all`).
    catch_alls: dict[DomainName, Address] = Field(default_factory=dict)
    # Alias domain (also in `local_domains`) → the local domain it delivers as: alias@name
    # reaches alias@domain for every account and redirect source of that domain, and postmaster.
    alias_domains: dict[DomainName, DomainName] = Field(default_factory=dict)
    global_filter: list[FilterLine] = Field(default_factory=list)
    global_filter_reject_text: ReplyText
    whitelist_reject_text: ReplyText
    whitelist_notice: bool = False
    whitelist_notice_text: SafeText | None = None  # None: built-in text (runtime.notify)
    spam: SpamPolicy = SpamPolicy()
    default_limits: Limits
    fail_action_inbound: FailAction = FailAction.DEFER
    fail_action_outbound: FailAction = FailAction.TEMPFAIL
    postmaster: Address
    # Where the agent submits notices and alerts (local Postfix, trusted by mynetworks).
    notify_smtp: SmtpEndpoint = "127.0.0.1:25"
    # Logs the follower reads (Postfix maillog_file or syslog's mail log; Dovecot's log_path).
    logs: list[AbsPath] = Field(default_factory=list)
    postfix_config_dir: AbsPath = "/etc/postfix"
    state_dir: AbsPath = "/var/lib/mailcfg/agent"
