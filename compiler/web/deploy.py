"""After a web commit, apply it to the hosts that serve the changed domain (`--apply`): the
same path as `mailcfg apply` (compile, plan, apply each host's shown plan as a release),
run while the web's commit lock is held so applies follow commits in order. The commit
stands whatever the apply does (git is the source of truth); the recap says what happened.
"""

from __future__ import annotations

from pathlib import Path

from compiler.build import BuildSession
from compiler.push.fleet import format_recap


def hosts_serving(session: BuildSession, domain: str) -> list[str]:
    inventory = session.load().inventory
    served = {domain, *(a for a, target in inventory.alias_domains.items() if target == domain)}
    return sorted(
        name
        for name, spec in inventory.hosts.items()
        if spec.domains == "all" or served & set(spec.domains)
    )


def apply_domain(inventory: Path, domain: str, cache_dir: Path | None = None) -> str:
    """Apply the inventory as committed to the hosts serving `domain`; the recap's text."""
    session = BuildSession.open(inventory, cache_dir=cache_dir)
    hosts = hosts_serving(session, domain)
    if not hosts:
        return "recap: no host serves this domain\n"
    targets, failures = session.compile(hosts)
    planned = session.plan(targets, failures)
    to_apply = {r.host: r.plan for r in planned if r.plan is not None and r.plan.has_changes}
    not_applied = [r for r in planned if r.host not in to_apply]
    applied = session.apply(targets, to_apply) if to_apply else []
    return format_recap(sorted([*applied, *not_applied], key=lambda r: r.host))
