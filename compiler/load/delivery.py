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

`compiler.load.crosscheck` calls `find_redirect_loops` on the whole inventory; the graph
algorithm is `schemas.graph`'s, shared with the agent's recipient index.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

from compiler.load.diagnostics import Finding, Ref
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
    todo = sorted(redirects, reverse=True)
    while todo:
        node = todo.pop()
        if node in graph:
            continue
        if node in redirects:
            onward = list(redirects[node])
        else:
            step = expand_address(node, redirects, mailboxes, aliases, catch_alls)
            onward = [step] if step is not None else []
        graph[node] = onward
        for t in onward:
            if t not in graph and (t in redirects or _expands(t, mailboxes, aliases, catch_alls)):
                todo.append(t)
    return graph


def _expands(
    address: str,
    mailboxes: Container[str],
    aliases: Mapping[str, str],
    catch_alls: Mapping[str, str],
) -> bool:
    domain = address.rpartition("@")[2]
    return domain in aliases or (domain in catch_alls and address not in mailboxes)


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
