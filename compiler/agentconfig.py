"""Build the agent's config (`schemas.agent.AgentConfig`) from a resolved host, and its text.

The agent never reads the inventory: everything it enforces at runtime (lists, filters,
limits, spam checks, fail-safe actions, the logs to follow) reaches it through this object,
rendered by the agent role as `agent.json`.

`render_agent_config` writes the same text as `dump_agent_config(make_agent_config(cfg))`
without building and serialising one `AgentAccount` per account: an account's line is put
together from the JSON of its lists and limits, each serialised once per distinct object
(most accounts share the default lists and limits).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from compiler.resolve import HostConfig
from schemas.agent import AgentAccount, AgentConfig
from schemas.policy import Listener

# Compact values keep json's C encoder (indent= falls back to pure Python).
_compact = json.JSONEncoder(sort_keys=True, separators=(", ", ": ")).encode
# What json uses for a str with ensure_ascii (the default; C when available): exact JSON.
_string = json.encoder.encode_basestring_ascii
# The sorted keys of an account entry, as render_agent_config writes them.
ACCOUNT_KEYS = ("blacklist", "enabled", "limits", "whitelist")


def probe_address(listener: Listener) -> str:
    """An address a local client can connect to for `listener`."""
    return "127.0.0.1" if listener.address in ("all", "*", "0.0.0.0") else listener.address


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _make_config(cfg: HostConfig, accounts: dict[str, AgentAccount]) -> AgentConfig:
    policy = cfg.policy
    paths = policy.paths
    logs = [paths.maillog_file or paths.mail_log]
    if paths.dovecot_log and paths.dovecot_log not in logs:
        logs.append(paths.dovecot_log)
    smtp = policy.listeners.smtp
    # Every input was validated by the inventory models, so construct without revalidating.
    return AgentConfig.model_construct(
        host=cfg.name,
        hostname=cfg.spec.hostname,
        listen=f"unix:{paths.agent_socket}",
        state=policy.policy_state,
        local_domains=sorted(cfg.domain_names),
        accounts=accounts,
        redirects={src: list(targets) for src, targets in cfg.redirects.items()},
        global_filter=list(policy.global_filter),
        global_filter_reject_text=policy.global_filter_reject_text,
        whitelist_reject_text=policy.whitelist_reject_text,
        whitelist_notice=policy.whitelist_notice,
        whitelist_notice_text=policy.whitelist_notice_text,
        spam=policy.spam,
        default_limits=policy.limits,
        fail_action_inbound=policy.policy_fail_action_inbound,
        fail_action_outbound=policy.policy_fail_action_outbound,
        postmaster=cfg.postmaster,
        notify_smtp=host_port(probe_address(smtp), smtp.port),
        logs=logs,
        postfix_config_dir=paths.postfix_config_dir,
        state_dir=paths.agent_state_dir,
    )


def make_agent_config(cfg: HostConfig) -> AgentConfig:
    accounts = {
        address: AgentAccount.model_construct(
            enabled=account.enabled,
            whitelist=account.whitelist,
            blacklist=account.blacklist,
            limits=cfg.limits[address],
        )
        for address, account in cfg.mailboxes.items()
    }
    return _make_config(cfg, accounts)


def _format_config(data: Mapping[str, Any], entries: Mapping[str, Sequence[str]]) -> str:
    """Sorted keys, one line per top-level key and one line per entry of a non-empty
    top-level mapping (`entries` gives some of those lines ready-made), so a plan's diff
    shows which account changed."""
    lines = []
    for key in sorted(data.keys() | entries.keys()):
        value = data.get(key)
        if key in entries:
            rows: Sequence[str] = entries[key]
        elif isinstance(value, dict):
            rows = [f"    {_string(k)}: {_compact(value[k])}" for k in sorted(value)]
        else:
            rows = ()
        if rows:
            lines.append(f"  {_string(key)}: {{\n" + ",\n".join(rows) + "\n  }")
        else:
            lines.append(f"  {_string(key)}: {_compact({} if key in entries else value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def dump_agent_config(config: AgentConfig) -> str:
    """Deterministic JSON text of `config` (see `_format_config`)."""
    return _format_config(config.model_dump(mode="json"), {})


def _account_entries(cfg: HostConfig) -> list[str]:
    texts: dict[int, str] = {}  # id → JSON of a list or limits object alive in `cfg`

    def text_of(model: BaseModel) -> str:
        text = texts.get(id(model))
        if text is None:
            text = texts[id(model)] = _compact(model.model_dump(mode="json"))
        return text

    limits = cfg.limits
    mailboxes = cfg.mailboxes
    entries = []
    for address in sorted(mailboxes):
        account = mailboxes[address]
        entries.append(
            f"    {_string(address)}: {{"
            f'"blacklist": {text_of(account.blacklist)}, '
            f'"enabled": {"true" if account.enabled else "false"}, '
            f'"limits": {text_of(limits[address])}, '
            f'"whitelist": {text_of(account.whitelist)}}}'
        )
    return entries


def _redirect_entries(cfg: HostConfig) -> list[str]:
    redirects = cfg.redirects
    return [
        f"    {_string(source)}: [{', '.join(map(_string, redirects[source]))}]"
        for source in sorted(redirects)
    ]


def render_agent_config(cfg: HostConfig) -> str:
    """`dump_agent_config(make_agent_config(cfg))`, fast (see the module docstring)."""
    data = _make_config(cfg, {}).model_dump(mode="json", exclude={"accounts", "redirects"})
    return _format_config(
        data, {"accounts": _account_entries(cfg), "redirects": _redirect_entries(cfg)}
    )
