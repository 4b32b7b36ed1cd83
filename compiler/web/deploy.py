"""After a web commit, one of: apply it to the hosts that serve the changed domain
(`--apply`: the same path as `mailcfg apply`, compile, plan, apply each host's shown plan as
a release), or push the branch to a remote branch for review (`--push REMOTE:BRANCH`); without
either option, what `web.after_commit` of `mailcfg.yml` says (`schemas.web`). Both
run while the web's commit lock is held, so they follow commits in order. The commit stands
whatever they do (git is the source of truth); what they say is shown to the person.
"""

from __future__ import annotations

import os
import subprocess
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


def apply_domain(
    inventory: Path, domain: str, cache_dir: Path | None = None, roles_dir: Path | None = None
) -> str:
    """Apply the inventory as committed to the hosts serving `domain`; the recap's text."""
    session = BuildSession.open(inventory, roles_dir=roles_dir, cache_dir=cache_dir)
    hosts = hosts_serving(session, domain)
    if not hosts:
        return "recap: no host serves this domain\n"
    targets, failures = session.compile(hosts)
    planned = session.plan(targets, failures)
    to_apply = {r.host: r.plan for r in planned if r.plan is not None and r.plan.has_changes}
    not_applied = [r for r in planned if r.host not in to_apply]
    applied = session.apply(targets, to_apply) if to_apply else []
    return format_recap(sorted([*applied, *not_applied], key=lambda r: r.host))


def after_commit_by_inventory(
    inventory: Path,
    toplevel: Path,
    domain: str,
    cache_dir: Path | None = None,
    roles_dir: Path | None = None,
) -> str:
    """What `web.after_commit` of the committed `mailcfg.yml` says to do, done."""
    session = BuildSession.open(inventory, roles_dir=roles_dir, cache_dir=cache_dir)
    web = session.load().inventory.web
    if web.after_commit == "apply":
        return apply_domain(inventory, domain, cache_dir, roles_dir)
    if web.after_commit == "push" and web.push_branch is not None:
        return push_head(toplevel, web.push_remote, web.push_branch)
    return ""


def push_head(toplevel: Path, remote: str, branch: str, timeout: float = 120.0) -> str:
    """Push HEAD to `remote`'s `branch` (never forced: a branch that moved there is refused
    and said so); git never asks for credentials here (the deploy key's, or none)."""
    result = subprocess.run(
        ["git", "-C", str(toplevel), "push", "--porcelain", remote, f"HEAD:refs/heads/{branch}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        return f"committed, but not pushed to {remote} {branch}: " + " ".join(detail)
    return f"pushed to {remote} {branch} for review"
