"""The agent's config (`schemas.agent.AgentConfig`) of a resolved host, as the text of agent.json.

The agent never reads the inventory: everything it enforces at runtime (lists, filters,
limits, spam checks, fail-safe actions, the logs to follow) reaches it through this file,
rendered by the agent role.

Owns the row rules of its domain-sized parts, each account's entry around its limits
(`account_head`, `account_tail`, applied by `make_account_entries`) and each redirect's entry
(`redirect_entry`), which `compiler.render.fragments` applies per domain and
`compiler.render.join` lays out for a host as `SharedAgentText`; and `render_agent_config`,
which puts the file together: sorted keys, one line per top-level key and one per entry of a
mapping, the JSON of the `AgentConfig` model dump (tests/reference_render.py builds it from
the model for the tests to compare). No `AgentAccount` is built or serialised per account:
each distinct list and limits object is serialised once (most accounts share the defaults).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compiler.render.resolve import HostConfig
from schemas.agent import AgentConfig
from schemas.domain import Account, SenderList
from schemas.policy import Listener

# Compact values keep json's C encoder (indent= falls back to pure Python).
_compact = json.JSONEncoder(sort_keys=True, separators=(", ", ": ")).encode
# What json uses for a str with ensure_ascii (the default; C when available): exact JSON.
_string = json.encoder.encode_basestring_ascii
# The sorted keys of an account entry, as render_agent_config writes them.
ACCOUNT_KEYS = ("blacklist", "enabled", "limits", "whitelist")
# Top-level keys written only when not empty (the agent reads their default, {}).
OPTIONAL_KEYS = ("alias_domains", "catch_alls")


def probe_address(listener: Listener) -> str:
    """An address a local client can connect to for `listener`."""
    return "127.0.0.1" if listener.address in ("all", "0.0.0.0") else listener.address


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _host_config(cfg: HostConfig) -> AgentConfig:
    """The config without its accounts and redirects (they are laid out as text)."""
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
        local_domains=sorted([*cfg.domain_names, *cfg.alias_domains]),
        accounts={},
        redirects={},
        catch_alls=cfg.catch_alls,
        alias_domains=cfg.alias_domains,
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


def _sender_list_json(senders: SenderList) -> str:
    """`_compact(senders.model_dump(mode="json"))`, 3x faster (10,000 accounts may have a
    list each): the fields of a SenderList are JSON values already (a bool, a str list)."""
    return _compact(senders.__dict__)


@dataclass(frozen=True, slots=True)
class SharedAgentText:
    """The parts of agent.json that depend on the served domains only, so hosts serving the
    same domains share them: the `accounts` entries without their limits (which follow the
    host's policy) and the `redirects` entries. `around` is the accounts' text cut at each
    account's limits (`around_limits`): one piece more than `addresses` (none when empty),
    the i-th limits go between pieces i and i+1."""

    addresses: tuple[str, ...]
    around: tuple[str, ...]
    redirects: str


LIMITS_MARK = "\x1f"  # where an account's limits go in the text `around_limits` cuts


def around_limits(before: Sequence[str], after: Sequence[str]) -> tuple[str, ...]:
    """The accounts' entries, the i-th made of `before[i]`, its limits and `after[i]`,
    joined by ",\n" and cut where the limits go. Neither holds `LIMITS_MARK`: both are JSON
    text, in which a control character is escaped."""
    if not before:
        return ()
    entries = map(LIMITS_MARK.join, zip(before, after, strict=True))
    return tuple(",\n".join(entries).split(LIMITS_MARK))


def redirect_entry(source: str, targets: Sequence[str]) -> str:
    """A redirect's line in agent.json's `redirects`."""
    return f"    {_string(source)}: [{', '.join(map(_string, targets))}]"


def account_head(blacklist: SenderList, enabled: bool) -> str:
    """An account's `accounts` entry from after its quoted address up to its limits."""
    flag = "true" if enabled else "false"
    return f'{{"blacklist": {_sender_list_json(blacklist)}, "enabled": {flag}, "limits": '


def account_tail(whitelist: SenderList) -> str:
    """An account's `accounts` entry after its limits."""
    return f', "whitelist": {_sender_list_json(whitelist)}}}'


def make_account_entries(
    accounts: Iterable[tuple[str, Account]],
) -> tuple[list[str], list[str]]:
    """The agent.json `accounts` entry of each `(address, account)` without its limits, in
    the given order: the text before the limits and the text after. Independent of the
    host's policy; each distinct list object's text is made once."""
    heads: dict[tuple[int, bool], str] = {}  # (id(blacklist), enabled) → text
    tails: dict[int, str] = {}  # id(whitelist) → text
    before = []
    after = []
    for address, account in accounts:
        blacklist, whitelist, enabled = account.blacklist, account.whitelist, account.enabled
        head = heads.get((id(blacklist), enabled))
        if head is None:
            head = heads[id(blacklist), enabled] = account_head(blacklist, enabled)
        tail = tails.get(id(whitelist))
        if tail is None:
            tail = tails[id(whitelist)] = account_tail(whitelist)
        before.append(f"    {_string(address)}: {head}")
        after.append(tail)
    return before, after


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
    # The shared text around the limits, each account's limits in between.
    pieces = [""] * (2 * count + 1)
    pieces[0::2] = shared.around
    pieces[1::2] = list(map(texts.__getitem__, ids))
    return pieces


def render_agent_config(cfg: HostConfig, shared: SharedAgentText) -> str:
    """agent.json of `cfg`, its domain-only parts from `shared` (`compiler.render.join`
    makes it; hosts serving the same domains share one)."""
    config = _host_config(cfg)
    # Keys of features a host does not use are left out, so its agent.json stays as it was.
    exclude = {"accounts", "redirects"} | {k for k in OPTIONAL_KEYS if not getattr(config, k)}
    data = config.model_dump(mode="json", exclude=exclude)
    return _format_config(
        data, {"accounts": _accounts_block(cfg, shared), "redirects": shared.redirects}
    )
