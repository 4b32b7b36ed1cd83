"""Where mail to a local address goes, as Postfix's virtual alias expansion walks it, and the
loops on that walk.

The walk: a redirect source goes to its targets; an address that maps to itself is delivered
there (a redirect of an enabled account that names the account keeps a copy in its mailbox);
an address of an alias domain goes to the same name in the domain it aliases (rows exist for
the enabled accounts and redirect sources of that domain, and its postmaster); any other
address of a domain with a catch-all goes to the catch-all target (an enabled account has an
identity row, so it is never caught). Postfix follows every other hop until its recursion
limit and then bounces: a cycle of distinct addresses is a loop, an error naming every hop.
A redirect that names itself without a mailbox behind it (no enabled account of that address)
bounces too, and is an error of its own.

Also where the walk ends nowhere: a redirect target in a local domain (or an alias domain) that
no account or redirect answers for, outside a domain with a catch-all (a warning: that mail
bounces), and a local catch-all target that is neither an enabled account nor a redirect (an
error: every guessed address would be accepted and then bounce).

`compiler.load.crosscheck` calls these on the whole inventory; the graph algorithm is
`schemas.graph`'s, shared with the agent's recipient index.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

from compiler.load.diagnostics import Finding, Ref
from compiler.load.sources import ANY_ADDRESS, DomainSource
from schemas.graph import is_loop, strongly_connected_components


def expand_address(
    address: str,
    redirects: Container[str],
    mailboxes: Container[str],
    aliases: Mapping[str, str],
    catch_alls: Mapping[str, str],
) -> str | None:
    """The one address Postfix rewrites `address` to when it is neither a redirect source
    nor an enabled account (`mailboxes`): its name in the aliased domain, or its domain's
    catch-all target; None when it is delivered, bounced or sent out as it is."""
    local, _, domain = address.rpartition("@")
    target = aliases.get(domain)
    if target is not None:
        name = f"{local}@{target}"
        if name in redirects or name in mailboxes or local == "postmaster":
            return name
        return None  # no row: Postfix rejects it
    if address in mailboxes:
        return None
    return catch_alls.get(domain)


def make_delivery_graph(
    redirects: Mapping[str, Sequence[str]],
    mailboxes: Container[str],
    aliases: Mapping[str, str],
    catch_alls: Mapping[str, str],
) -> dict[str, list[str]]:
    """Each address that Postfix expands on a walk from a redirect → the addresses it goes
    to (sources in sorted order): the redirects, and the alias-domain and caught addresses
    they lead to. Without alias domains and catch-alls, only the redirects that lead to other
    redirects (nothing else can be part of a loop)."""
    graph: dict[str, list[str]] = {}
    if not aliases and not catch_alls:
        for source in sorted(redirects):
            onward = [t for t in redirects[source] if t in redirects]
            if onward:
                graph[source] = onward
        return graph
    expanding = aliases.keys() | catch_alls.keys()
    pending: list[str] = []
    for source in sorted(redirects):
        # Edges that may go on: to redirects, and to addresses of alias or catch-all domains.
        onward = [t for t in redirects[source] if t in redirects or _domain(t) in expanding]
        if onward:
            graph[source] = onward
            pending += (t for t in onward if t not in redirects)
    while pending:
        node = pending.pop()
        if node in graph:
            continue
        step = expand_address(node, redirects, mailboxes, aliases, catch_alls)
        graph[node] = [step] if step is not None else []
        if step is not None and step not in redirects and _domain(step) in expanding:
            pending.append(step)
    return graph


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def find_redirect_loops(
    redirect_at: Mapping[str, Ref],
    redirects: Mapping[str, Sequence[str]],
    mailboxes: Container[str],
    aliases: Mapping[str, str] | None = None,
    catch_alls: Mapping[str, str] | None = None,
) -> list[Finding]:
    """The loops of the walk from every redirect (`redirect_at`: where each redirect's name
    is declared; `mailboxes`: the enabled accounts), and each redirect that names itself
    without a mailbox."""
    graph = make_delivery_graph(redirects, mailboxes, aliases or {}, catch_alls or {})
    findings = []
    for source, onward in graph.items():
        if source not in onward:
            continue
        graph[source] = [t for t in onward if t != source]
        if source in redirect_at and source not in mailboxes:
            ref = redirect_at[source]
            findings.append(
                Finding(
                    ref.file,
                    (*ref.path[:-1], "to", list(redirects[source]).index(source)),
                    f"redirect {source} names itself, but {source} is no enabled account: "
                    "mail to it would bounce (a redirect keeps a copy only in the mailbox of "
                    "an enabled account of that address; drop it from `to`)",
                )
            )
    for component in strongly_connected_components(graph):
        members = [a for a in component if a in redirect_at]
        if not is_loop(component, graph) or not members:
            continue  # a loop of catch-alls alone: their own errors name them
        start = min(members)
        cycle = _cycle_through(start, graph, set(component))
        hops = " → ".join([*(_hop(a, redirects, aliases, catch_alls) for a in cycle), cycle[0]])
        declared = [a for a in cycle if a in redirect_at]
        refs = tuple(redirect_at[a] for a in declared)
        where = ", ".join(f"{a} at {{{i}}}" for i, a in enumerate(declared))
        first = refs[0]
        to_index = list(redirects[start]).index(cycle[1] if len(cycle) > 1 else start)
        findings.append(
            Finding(
                first.file,
                (*first.path[:-1], "to", to_index),
                f"redirect loop: {hops} (mail would circle until it bounces); "
                f"redirects in the loop: {where}",
                refs=refs,
            )
        )
    return findings


def _hop(
    address: str,
    redirects: Container[str],
    aliases: Mapping[str, str] | None,
    catch_alls: Mapping[str, str] | None,
) -> str:
    """A hop of a loop as its message names it: how a hop that is no redirect goes on."""
    if address in redirects:
        return address
    domain = address.rpartition("@")[2]
    if aliases and domain in aliases:
        return f"{address} (alias domain of {aliases[domain]})"
    if catch_alls and domain in catch_alls:
        return f"{address} (catch-all of {domain})"
    return address


def _cycle_through(start: str, graph: Mapping[str, Sequence[str]], allowed: set[str]) -> list[str]:
    """A shortest cycle start → ... → start inside one strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for t in graph.get(node, ()):
                if t == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return list(reversed(path))
                if t in allowed and t not in previous:
                    previous[t] = node
                    nxt_frontier.append(t)
        frontier = nxt_frontier
    return [start]


def has_bad_walk(graph: Mapping[str, Sequence[str]], mailboxes: Container[str]) -> bool:
    """Whether `make_delivery_graph`'s `graph` holds what `find_redirect_loops` reports: a
    source naming itself without a mailbox, or a loop of distinct addresses."""
    walk: dict[str, Sequence[str]] = {}
    for source, onward in graph.items():
        if source in onward:
            if source not in mailboxes:
                return True
            onward = [t for t in onward if t != source]
        walk[source] = onward
    return any(is_loop(c, walk) for c in strongly_connected_components(walk))


def dangles(
    target: str,
    accounts: Container[str],
    redirects: Container[str],
    local: Container[str],
    invalid: Container[str],
    aliases: Mapping[str, str],
    catch_alls: Container[str],
) -> bool:
    """Whether mail to redirect target `target` bounces: it is in a local domain (`local`) or
    an alias domain of one, no account or redirect answers for it (valid, or `invalid`, whose
    error is reported already) and its domain has no catch-all."""
    local_part, _, domain = target.rpartition("@")
    if domain in aliases:
        if local_part == "postmaster":
            return False  # every alias domain has its postmaster row
        domain = aliases[domain]
        target = f"{local_part}@{domain}"
    return (
        domain in local
        and domain not in catch_alls
        and target not in accounts
        and target not in redirects
        and target not in invalid
        and ANY_ADDRESS + domain not in invalid
    )


def find_dangling_targets(
    sources: Sequence[DomainSource],
    accounts: Container[str],
    redirects: Container[str],
    local: Container[str],
    invalid: Container[str],
    aliases: Mapping[str, str] | None = None,
    catch_alls: Container[str] = (),
) -> list[Finding]:
    """A warning for each redirect target of `sources` that `dangles`."""
    aliases = aliases or {}
    findings = []
    for src in sources:
        for i, red in enumerate(src.domain.redirects):
            for j, target in enumerate(red.to):
                if dangles(target, accounts, redirects, local, invalid, aliases, catch_alls):
                    findings.append(
                        Finding(
                            src.file,
                            ("redirects", src.redirect_at(i), "to", j),
                            f"{target} is in local domain {target.rpartition('@')[2]} but is "
                            "neither an account nor a redirect there; mail to it will bounce",
                            severity="warning",
                        )
                    )
    return findings


def find_dangling_catch_alls(
    sources: Sequence[DomainSource],
    mailboxes: Container[str],
    redirects: Container[str],
    invalid: Container[str],
    aliases: Mapping[str, str],
) -> list[Finding]:
    """Catch-all targets in a local domain (or an alias domain) that are neither an enabled
    account nor a redirect: every guessed address would be accepted and then bounce."""
    local = {src.domain.domain for src in sources}
    findings = []
    for src in sources:
        target = src.domain.catch_all
        if target is None:
            continue
        local_part, _, domain = target.rpartition("@")
        address = f"{local_part}@{aliases[domain]}" if domain in aliases else target
        domain = address.rpartition("@")[2]
        # postmaster@ of a served domain always exists (`tables.make_postmaster_aliases`).
        known = address in mailboxes or address in redirects or address in invalid
        known = known or local_part == "postmaster"
        if domain not in local or known or ANY_ADDRESS + domain in invalid:
            continue
        findings.append(
            Finding(
                src.file,
                ("catch_all",),
                f"catch-all target {target} is in local domain {target.rpartition('@')[2]} "
                "but is neither an enabled account nor a redirect there: every unknown "
                f"address of {src.domain.domain} would be accepted and then bounce "
                "(backscatter); name an enabled account or a redirect",
            )
        )
    return findings
