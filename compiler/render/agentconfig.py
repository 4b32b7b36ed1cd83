"""Build the agent's config (`schemas.agent.AgentConfig`) from a resolved host, and its text.

The agent never reads the inventory: everything it enforces at runtime (lists, filters,
limits, spam checks, fail-safe actions, the logs to follow) reaches it through this object,
rendered by the agent role as `agent.json`.

`render_agent_config` writes the same text as `dump_agent_config(make_agent_config(cfg))`
without building and serialising one `AgentAccount` per account: an account's line is put
together from the JSON of its lists and limits, each serialised once per distinct object
(most accounts share the default lists and limits), and what does not depend on the host's
policy (`SharedAgentText`) is made once for all hosts serving the same domains.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compiler.render.resolve import HostConfig, mailboxes_by_domain
from schemas.agent import AgentAccount, AgentConfig
from schemas.domain import Account, SenderList
from schemas.policy import Listener

# Compact values keep json's C encoder (indent= falls back to pure Python).
_compact = json.JSONEncoder(sort_keys=True, separators=(", ", ": ")).encode
# What json uses for a str with ensure_ascii (the default; C when available): exact JSON.
_string = json.encoder.encode_basestring_ascii
# The sorted keys of an account entry, as render_agent_config writes them.
ACCOUNT_KEYS = ("blacklist", "enabled", "limits", "whitelist")


def probe_address(listener: Listener) -> str:
    """An address a local client can connect to for `listener`."""
    return "127.0.0.1" if listener.address in ("all", "0.0.0.0") else listener.address


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


def _format_config(data: Mapping[str, Any], blocks: Mapping[str, str | list[str]]) -> str:
    """Sorted keys, one line per top-level key and one line per entry of a non-empty
    top-level mapping (`blocks` gives some of those mappings' entry lines ready-made, joined
    by ",\n", as one text or as pieces of it), so a plan's diff shows which account changed.
    One final join: the accounts block of a large inventory is megabytes, each
    concatenation would copy it."""
    pieces = ["{\n"]
    for key in sorted(data.keys() | blocks.keys()):
        if len(pieces) > 1:
            pieces.append(",\n")
        block: str | list[str]
        if key in blocks:
            block = blocks[key]
        else:
            value = data[key]
            if not isinstance(value, dict):
                pieces += ("  ", _string(key), ": ", _compact(value))
                continue
            block = ",\n".join(f"    {_string(k)}: {_compact(value[k])}" for k in sorted(value))
        if block:
            pieces += ("  ", _string(key), ": {\n")
            if isinstance(block, str):
                pieces.append(block)
            else:
                pieces += block
            pieces.append("\n  }")
        else:
            pieces += ("  ", _string(key), ": {}")
    pieces.append("\n}\n")
    return "".join(pieces)


def dump_agent_config(config: AgentConfig) -> str:
    """Deterministic JSON text of `config` (see `_format_config`)."""
    return _format_config(config.model_dump(mode="json"), {})


def _sender_list_json(senders: SenderList) -> str:
    """`_compact(senders.model_dump(mode="json"))`, 3x faster (10,000 accounts may have a
    list each): the fields of a SenderList are JSON values already (a bool, a str list)."""
    return _compact(senders.__dict__)


@dataclass(frozen=True, slots=True)
class SharedAgentText:
    """The parts of agent.json that depend on the served domains only, so hosts serving the
    same domains share them: the `accounts` entries without their limits (which follow the
    host's policy) and the `redirects` entries: for the i-th account of `addresses`, the text
    before its limits and the text after."""

    addresses: tuple[str, ...]
    before: tuple[str, ...]
    after: tuple[str, ...]
    redirects: str


def make_redirect_entries(redirects: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    """The agent.json `redirects` entry of each `(source, targets)`, in the given order."""
    return [
        f"    {_string(source)}: [{', '.join(map(_string, targets))}]"
        for source, targets in redirects
    ]


def make_account_entries(
    accounts: Iterable[tuple[str, Account]],
) -> tuple[list[str], list[str]]:
    """The agent.json `accounts` entry of each `(address, account)` without its limits, in
    the given order: the text before the limits and the text after. Independent of the
    host's policy; the JSON of each distinct list object is made once."""
    heads: dict[tuple[int, bool], str] = {}  # (id(blacklist), enabled) → text
    tails: dict[int, str] = {}  # id(whitelist) → text
    before = []
    after = []
    for address, account in accounts:
        blacklist, whitelist, enabled = account.blacklist, account.whitelist, account.enabled
        head = heads.get((id(blacklist), enabled))
        if head is None:
            black = _sender_list_json(blacklist)
            flag = "true" if enabled else "false"
            head = heads[id(blacklist), enabled] = (
                f'{{"blacklist": {black}, "enabled": {flag}, "limits": '
            )
        tail = tails.get(id(whitelist))
        if tail is None:
            white = _sender_list_json(whitelist)
            tail = tails[id(whitelist)] = f', "whitelist": {white}}}'
        before.append(f"    {_string(address)}: {head}")
        after.append(tail)
    return before, after


def make_shared_agent_text(cfg: HostConfig) -> SharedAgentText:
    """The domain-only parts of `cfg`'s agent.json (`compiler.render.context` may assemble the
    same from per-domain fragments instead)."""
    accounts = mailboxes_by_domain(cfg)
    heads, tails = make_account_entries(accounts)
    before = dict(zip([a for a, _ in accounts], heads, strict=True))
    after = dict(zip([a for a, _ in accounts], tails, strict=True))
    addresses = sorted(cfg.mailboxes)
    redirects = cfg.redirects
    return SharedAgentText(
        addresses=tuple(addresses),
        before=tuple([before[a] for a in addresses]),
        after=tuple([after[a] for a in addresses]),
        redirects=",\n".join(make_redirect_entries((s, redirects[s]) for s in sorted(redirects))),
    )


def _accounts_block(cfg: HostConfig, shared: SharedAgentText) -> list[str]:
    """The `accounts` entries as pieces of text (joined once, with the rest of the file):
    each account's shared text around its limits, laid out by slice assignment."""
    count = len(shared.addresses)
    if not count:
        return []
    limits = cfg.limits
    if tuple(limits) == shared.addresses:  # resolve_host's order: no lookup by address
        values = list(limits.values())
    else:
        values = [limits[address] for address in shared.addresses]
    ids = list(map(id, values))
    # Each distinct limits object (most accounts share the host's default) encoded once.
    distinct = dict(zip(ids, values, strict=True))
    texts = {key: _compact(value.model_dump(mode="json")) for key, value in distinct.items()}
    # before, limits, after, separator for each account.
    pieces = [",\n"] * (4 * count)
    pieces[0::4] = shared.before
    pieces[1::4] = list(map(texts.__getitem__, ids))
    pieces[2::4] = shared.after
    pieces[-1] = ""
    return pieces


def render_agent_config(cfg: HostConfig, shared: SharedAgentText | None = None) -> str:
    """`dump_agent_config(make_agent_config(cfg))`, fast (see the module docstring). `shared`
    is `make_shared_agent_text(cfg)`, possibly made for another host of the same domains."""
    shared = shared if shared is not None else make_shared_agent_text(cfg)
    data = _make_config(cfg, {}).model_dump(mode="json", exclude={"accounts", "redirects"})
    return _format_config(
        data, {"accounts": _accounts_block(cfg, shared), "redirects": shared.redirects}
    )
