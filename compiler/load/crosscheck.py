"""Rules that span objects or files, which a single model cannot check.

Domain files: the file name equals the domain, a file declares only objects of its own domain,
an address is an account at most once and a redirect source at most once (an account and a
redirect of the same name are allowed: the redirect wins), no redirect loops (any cycle, also
multi-hop, across files and through alias domains and catch-alls: `compiler.load.delivery`; a
redirect naming itself keeps a copy, fine for an enabled account only), a catch-all names an
enabled account or a redirect when its target is local. Inventory file: hosts name known
groups and domains; `postfix_main` overrides are plain `name = value` lines of parameters an
inventory may set (`compiler.load.postfix_params`); alias domains: `compiler.load.aliasdomains`.
Everything here returns unlocated `Finding`s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any

from compiler.connectors.confine import local_root_problem
from compiler.load.aliasdomains import alias_domain_hint
from compiler.load.delivery import (
    dangles,
    find_dangling_catch_alls,
    find_dangling_targets,
    find_redirect_loops,
    has_bad_walk,
    make_delivery_graph,
)
from compiler.load.diagnostics import DataPath, Finding, Ref
from compiler.load.postfix_params import managed_parameters, refusal_of

# DomainSource and ANY_ADDRESS are also this module's: the loader and the tests name them here.
from compiler.load.sources import ANY_ADDRESS as ANY_ADDRESS
from compiler.load.sources import DomainSource as DomainSource
from compiler.load.sources import enabled_accounts, invalid_addresses
from schemas.common import check_domain
from schemas.graph import is_loop, strongly_connected_components

_MAIN_CF_NAME = re.compile(r"[a-z][a-z0-9_]*")  # re.fullmatch: no trailing-newline escape


def _account_ref(src: DomainSource, i: int) -> Ref:
    return Ref(src.file, ("accounts", src.account_at(i), "name"))


def _redirect_ref(src: DomainSource, i: int) -> Ref:
    return Ref(src.file, ("redirects", src.redirect_at(i), "name"))


def check_domains(
    sources: Sequence[DomainSource], aliases: Mapping[str, str] | None = None
) -> list[Finding]:
    """Every finding of the domain rules (see the module docstring) over `sources`;
    `aliases` are the inventory's alias domains (alias → a domain of `sources`), whose
    addresses redirects and catch-alls may name."""
    quick = _check_domains_quickly(sources, aliases)
    return quick if quick is not None else _check_domains_fully(sources, aliases)


def _check_domains_quickly(
    sources: Sequence[DomainSource], aliases: Mapping[str, str] | None = None
) -> list[Finding] | None:
    """The findings when the domains break no rule (dangling targets, a warning, may be
    found), or None: then `_check_domains_fully` finds the errors and where they are.
    Whole-inventory set operations instead of a step per account and redirect: a warm
    load after one edit checks every domain again, cached or not."""
    aliases = aliases or {}
    accounts: list[str] = []
    redirects: list[str] = []
    targets: list[list[str]] = []  # each redirect's `to`, parallel to `redirects`
    for src in sources:
        dom = src.domain
        name = dom.domain
        if src.stem != name:
            return None
        suffix = "@" + name
        names = [a.name for a in dom.accounts]
        names += [r.name for r in dom.redirects]
        if "@" in "".join(names):  # some names are full addresses
            if any("@" in n and n.rpartition("@")[2] != name for n in names):
                return None  # an object of another domain
            addresses = [n if "@" in n else n + suffix for n in names]
        else:
            addresses = (f"{suffix}\n".join(names) + suffix).split("\n") if names else []
        count = len(dom.accounts)
        accounts += addresses[:count]
        redirects += addresses[count:]
        targets += [r.to for r in dom.redirects]
    account_set = set(accounts)
    redirect_set = set(redirects)
    if len(account_set) != len(accounts) or len(redirect_set) != len(redirects):
        return None  # declared twice
    every_target = set(chain.from_iterable(targets))
    invalid = invalid_addresses(sources)
    catch_alls = {s.domain.domain: s.domain.catch_all for s in sources if s.domain.catch_all}
    if aliases or catch_alls:  # the walk goes on through them: see compiler.load.delivery
        mailboxes = enabled_accounts(sources)
        routes = dict(zip(redirects, targets, strict=True))
        if has_bad_walk(make_delivery_graph(routes, mailboxes, aliases, catch_alls), mailboxes):
            return None
        if find_dangling_catch_alls(sources, mailboxes, redirect_set, invalid, aliases):
            return None
    elif not every_target.isdisjoint(redirect_set):
        graph: dict[str, list[str]] = {}
        copies: frozenset[str] | None = None  # made only for a redirect naming itself
        for source, to in zip(redirects, targets, strict=True):
            onward = [t for t in to if t in redirect_set]
            if source in onward:  # forward and keep a copy: fine with a mailbox
                copies = enabled_accounts(sources) if copies is None else copies
                if source not in copies:
                    return None
                onward = [t for t in onward if t != source]
            if onward:
                graph[source] = onward
        if any(is_loop(c, graph) for c in strongly_connected_components(graph)):
            return None  # a redirect loop
    local = {src.domain.domain for src in sources}
    dangling = {
        t
        for t in every_target - account_set - redirect_set - invalid
        if dangles(t, account_set, redirect_set, local, invalid, aliases, catch_alls)
    }
    if not dangling:
        return []
    # Only the files that hold a dangling target (in file order, as the full check).
    holders = [
        src for src in sources if any(not dangling.isdisjoint(r.to) for r in src.domain.redirects)
    ]
    return find_dangling_targets(
        holders, account_set, redirect_set, local, invalid, aliases, catch_alls
    )


def _check_domains_fully(
    sources: Sequence[DomainSource], aliases: Mapping[str, str] | None = None
) -> list[Finding]:
    aliases = aliases or {}
    findings: list[Finding] = []
    # address → where it is first declared; `Ref`s are made only for findings (this loop
    # sees every account and redirect of the inventory, tens of thousands).
    accounts: dict[str, tuple[DomainSource, int]] = {}
    redirect_at: dict[str, tuple[DomainSource, int]] = {}
    redirect_to: dict[str, tuple[str, ...]] = {}
    for src in sources:
        dom = src.domain
        if src.stem != dom.domain:
            findings.append(
                Finding(
                    src.file,
                    ("domain",),
                    f"the file declares domain {dom.domain!r} but is named {src.stem!r}; "
                    f"a domain file must be named after its domain ({dom.domain}.yml)",
                )
            )
        suffix = "@" + dom.domain
        for i, acc in enumerate(dom.accounts):
            address = _declared_address(src, i, acc.name, suffix, _account_ref, findings)
            first = accounts.get(address)
            if first is None:
                accounts[address] = (src, i)
                continue
            findings.append(
                Finding(
                    src.file,
                    _account_ref(src, i).path,
                    f"account {address} is declared twice (first at {{0}}); "
                    "an address may have one account",
                    refs=(_account_ref(*first),),
                )
            )
        for i, red in enumerate(dom.redirects):
            address = _declared_address(src, i, red.name, suffix, _redirect_ref, findings)
            first = redirect_at.get(address)
            if first is None:
                redirect_at[address] = (src, i)
                redirect_to[address] = tuple(red.to)
                continue
            findings.append(
                Finding(
                    src.file,
                    _redirect_ref(src, i).path,
                    f"redirect {address} is declared twice (first at {{0}}); "
                    "list every target in one redirect's `to`",
                    refs=(_redirect_ref(*first),),
                )
            )
    mailboxes = enabled_accounts(sources)
    catch_alls = {s.domain.domain: s.domain.catch_all for s in sources if s.domain.catch_all}
    declared = {address: _redirect_ref(*at) for address, at in redirect_at.items()}
    findings.extend(find_redirect_loops(declared, redirect_to, mailboxes, aliases, catch_alls))
    local = {src.domain.domain for src in sources}
    invalid = invalid_addresses(sources)
    findings.extend(
        find_dangling_targets(sources, accounts, redirect_to, local, invalid, aliases, catch_alls)
    )
    findings.extend(find_dangling_catch_alls(sources, mailboxes, redirect_to, invalid, aliases))
    return findings


def _declared_address(
    src: DomainSource,
    index: int,
    name: str,
    suffix: str,
    ref: Callable[[DomainSource, int], Ref],
    findings: list[Finding],
) -> str:
    """The full address of a declared name; a full address of another domain is reported
    (its path is built only then: most names are local parts)."""
    if "@" not in name:
        return name + suffix
    findings.extend(_foreign(src, ref(src, index).path, name))
    return name


def _foreign(src: DomainSource, path: DataPath, name: str) -> list[Finding]:
    if "@" not in name:
        return []
    other = name.rpartition("@")[2]
    if other == src.domain.domain:
        return []
    return [
        Finding(
            src.file,
            path,
            f"{name} belongs to domain {other}, not {src.domain.domain}; declare it in that "
            f"domain's file (domains/{other}.yml)",
        )
    ]


def check_hosts(raw: Any, domain_files: Mapping[str, str], *, file: str) -> list[Finding]:
    """Hosts of the raw inventory file name existing groups and domains (`domain_files`:
    domain → its file); every domain is served by some host; a local `root` is no system
    directory and a relative one stays below the current directory
    (`compiler.connectors.confine.local_root_problem`). Works on raw data so that it also runs
    when other parts of the file are invalid."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("hosts"), Mapping):
        return []
    groups = raw.get("groups")
    known_groups = set(groups) if isinstance(groups, Mapping) else set()
    known = set(domain_files)
    served: set[str] = set()
    findings = []
    for name, host in raw["hosts"].items():
        if not isinstance(host, Mapping):
            continue
        root = host.get("root")
        if isinstance(root, str):
            problem = local_root_problem(root)
            if problem:
                findings.append(Finding(file, ("hosts", name, "root"), problem))
        host_groups = host.get("groups", [])
        for i, group in enumerate(host_groups if isinstance(host_groups, list) else []):
            if isinstance(group, str) and group not in known_groups:
                allowed = ", ".join(sorted(map(str, known_groups))) or "none are defined"
                findings.append(
                    Finding(
                        file,
                        ("hosts", name, "groups", i),
                        f"unknown group {group!r}; groups: {allowed}",
                    )
                )
        domains = host.get("domains", "all")
        if domains == "all" or not isinstance(domains, list):
            served |= known
            continue
        for i, domain in enumerate(domains):
            if not isinstance(domain, str):
                continue
            served.add(domain.lower())
            if domain.lower() not in known:
                findings.append(
                    Finding(
                        file,
                        ("hosts", name, "domains", i),
                        f"unknown domain {domain!r}: there is no domains/{domain}.yml"
                        + alias_domain_hint(raw, domain.lower()),
                    )
                )
    for domain in sorted(known - served):
        findings.append(
            Finding(
                domain_files[domain],
                ("domain",),
                f"domain {domain} is served by no host (add it to a host's `domains`)",
                severity="warning",
            )
        )
    return findings


def policy_layers(raw: Any) -> list[tuple[DataPath, Any]]:
    """Every `policy` layer of the raw inventory file with its data path: the inventory's,
    each group's and each host's (values as written, not yet validated)."""
    if not isinstance(raw, Mapping):
        return []
    layers: list[tuple[DataPath, Any]] = [(("policy",), raw.get("policy"))]
    for section in ("groups", "hosts"):
        entries = raw.get(section)
        if isinstance(entries, Mapping):
            for name, spec in entries.items():
                if isinstance(spec, Mapping):
                    layers.append(((section, name, "policy"), spec.get("policy")))
    return layers


def check_postfix_main(raw: Any, *, file: str) -> list[Finding]:
    """`postfix_main` overrides at every layer of the raw inventory file: a parameter name
    that mailcfg neither sets itself nor denies (`compiler.load.postfix_params`), and a one-line
    value that cannot break out of its `name = value` line."""
    findings = []
    managed: frozenset[str] | None = None  # read from main.cf.j2 once, only when needed
    for prefix, policy in policy_layers(raw):
        if not isinstance(policy, Mapping) or not isinstance(policy.get("postfix_main"), Mapping):
            continue
        for key, value in policy["postfix_main"].items():
            path = (*prefix, "postfix_main", key)
            if not isinstance(key, str) or not _MAIN_CF_NAME.fullmatch(key):
                findings.append(
                    Finding(
                        file,
                        path,
                        f"{key!r} is not a main.cf parameter name "
                        "(lower-case letters, digits and '_')",
                        at_key=True,
                    )
                )
            else:
                managed = managed if managed is not None else managed_parameters()
                refusal = refusal_of(key, managed)
                if refusal:
                    findings.append(Finding(file, path, refusal, at_key=True))
            if isinstance(value, str):
                problem = _main_cf_value_problem(value)
                if problem:
                    findings.append(Finding(file, path, f"{value!r}: {problem}"))
    return findings


def _main_cf_value_problem(value: str) -> str | None:
    if re.search(r"[\"'\\]", value):
        return "quotes and backslashes have no meaning in main.cf and are not allowed"
    depth = 0
    for ch in value:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0:
        return "unbalanced '{' '}' (main.cf braces group a value; they must pair up)"
    return None


def check_external_senders(
    raw: Any, domain_files: Mapping[str, str], *, file: str
) -> list[Finding]:
    """`external_senders` at every layer of the raw inventory file name domains of the
    inventory (`domain_files`: domain → its file): the switch lets outside clients use a
    served domain's addresses, so a name that is no domain here is a mistake."""
    findings = []
    for prefix, policy in policy_layers(raw):
        entries = policy.get("external_senders") if isinstance(policy, Mapping) else None
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            domain = entry.get("domain") if isinstance(entry, Mapping) else None
            if not isinstance(domain, str) or _malformed_domain(domain):
                continue  # the schema reports it
            if check_domain(domain) not in domain_files:
                findings.append(
                    Finding(
                        file,
                        (*prefix, "external_senders", i, "domain"),
                        f"unknown domain {domain!r}: there is no domains/{domain}.yml "
                        "(external_senders lists client networks for a served domain)",
                    )
                )
    return findings


def _malformed_domain(value: str) -> bool:
    try:
        check_domain(value)
    except ValueError:
        return True
    return False
