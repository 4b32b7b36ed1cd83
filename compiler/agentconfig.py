"""Build the agent's config (`schemas.agent.AgentConfig`) from a resolved host.

The agent never reads the inventory: everything it enforces at runtime (lists, filters,
limits, spam checks, fail-safe actions, the logs to follow) reaches it through this object,
rendered by the agent role as `agent.json`.
"""

from __future__ import annotations

import json

from compiler.resolve import HostConfig
from schemas.agent import AgentAccount, AgentConfig
from schemas.policy import Listener


def probe_address(listener: Listener) -> str:
    """An address a local client can connect to for `listener`."""
    return "127.0.0.1" if listener.address in ("all", "*", "0.0.0.0") else listener.address


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def make_agent_config(cfg: HostConfig) -> AgentConfig:
    policy = cfg.policy
    paths = policy.paths
    # Every input below was validated by the inventory models, so construct without
    # revalidating (50,000 accounts: validation would cost seconds per render).
    accounts = {
        address: AgentAccount.model_construct(
            enabled=account.enabled,
            whitelist=account.whitelist,
            blacklist=account.blacklist,
            limits=cfg.limits[address],
        )
        for address, account in cfg.mailboxes.items()
    }
    logs = [paths.maillog_file or paths.mail_log]
    if paths.dovecot_log and paths.dovecot_log not in logs:
        logs.append(paths.dovecot_log)
    smtp = policy.listeners.smtp
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


def dump_agent_config(config: AgentConfig) -> str:
    """Deterministic JSON text: sorted keys, one line per top-level key and one line per
    entry of a top-level mapping (accounts, redirects), so a plan's diff shows which account
    changed. Compact values keep json's C encoder (indent= falls back to pure Python)."""
    data = config.model_dump(mode="json")
    compact = json.JSONEncoder(sort_keys=True, separators=(", ", ": ")).encode
    lines = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, dict) and value:
            entries = [f"    {compact(k)}: {compact(value[k])}" for k in sorted(value)]
            lines.append(f"  {compact(key)}: {{\n" + ",\n".join(entries) + "\n  }")
        else:
            lines.append(f"  {compact(key)}: {compact(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"
