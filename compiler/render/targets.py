"""Compile an inventory into per-host targets: resolved config, rendered tree, activations.

Pure (reads templates only). A host whose rendering fails is reported by name instead of
stopping the other hosts. Every rendered path is checked to be a plain absolute path (no "..",
".", "//"): the values that build paths are checked at load time already, and this is the
second line, so that no writer below (`render --out`, a local root, the on-host script) is
ever handed a path that could leave its root.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from compiler.cache.gcpause import gc_paused
from compiler.connectors.confine import split_below
from compiler.render.context import host_role_names, make_base_context
from compiler.render.fragments import FragmentCache
from compiler.render.join import DomainSetCache
from compiler.render.render import render_host
from compiler.render.resolve import HostConfig, ServedAccountsCache, resolve_host
from compiler.render.roles import Roles, make_activations, make_needs, role_defaults
from compiler.types import Activation, FileTree, HostNeeds
from schemas.inventory import HostSpec, Inventory


@dataclass(frozen=True, slots=True)
class Target:
    """One host ready to plan: its spec, desired tree and the activation of every role (made
    with the host's config): a plan keeps those of the roles it changes, which may include a
    role the host no longer has (its files are deleted); a rollback those of `host_roles`."""

    name: str
    spec: HostSpec
    tree: FileTree
    activations: tuple[Activation, ...]
    needs: HostNeeds = field(default_factory=HostNeeds)  # what its roles need on the machine

    @property
    def host_roles(self) -> set[str]:
        """The roles the host has: those of its spec and of its rendered files."""
        return {f.role for f in self.tree.values()} | {r.value for r in self.spec.roles}


@dataclass(frozen=True, slots=True)
class CompileFailure:
    host: str
    message: str


@dataclass(slots=True)
class CompileCache:
    """What hosts of one run share: their served domains' accounts and derived tables."""

    accounts: ServedAccountsCache = field(default_factory=ServedAccountsCache)
    domain_sets: DomainSetCache = field(default_factory=DomainSetCache)


def compile_host(
    inventory: Inventory, roles: Roles, host: str, cache: CompileCache | None = None
) -> tuple[HostConfig, Target]:
    cache = cache if cache is not None else CompileCache()
    cfg = resolve_host(inventory, host, role_defaults(roles), cache.accounts)
    tree = render_host(cfg, roles, cache.domain_sets)
    check_tree_paths(tree)
    activations = make_activations(cfg, roles, roles.roles)
    # Every role the host renders (acme and the filtering roles too), as render_host does.
    needs = make_needs(roles, host_role_names(cfg), make_base_context(cfg))
    return cfg, Target(host, inventory.hosts[host], tree, activations, needs)


class PathError(ValueError):
    """A rendered path that could leave the root it is written below."""


def check_tree_paths(tree: FileTree) -> None:
    """Refuse a tree with a path that is not absolute or not plain (see the module docstring),
    or a file where another path needs a directory (`paths.dovecot_config_dir` set to the
    path of main.cf): no writer could lay out such a tree, and it would fail half-way."""
    files = tree.files
    for path in files:
        if not path.startswith("/"):
            raise PathError(f"rendered path {path!r} is not absolute")
        try:
            parts = split_below(path)
        except ValueError:
            raise PathError(
                f"rendered path {path!r} has a '..', '.' or empty component: a value that "
                "builds it (a paths.* entry, an account name) must not make one"
            ) from None
        for i in range(1, len(parts)):
            above = "/" + "/".join(parts[:i])
            if above in files:
                raise PathError(
                    f"rendered path {above!r} is a file, but {path!r} needs it to be a "
                    "directory: two paths.* entries overlap"
                )


def compile_targets(
    inventory: Inventory,
    roles: Roles,
    hosts: Sequence[str],
    *,
    fragments: FragmentCache | None = None,
) -> tuple[list[Target], list[CompileFailure]]:
    """Targets for `hosts`, and the hosts that could not be compiled (with the reason).
    `fragments` (for this inventory) reuses per-domain rows made by an earlier run."""
    targets: list[Target] = []
    failures: list[CompileFailure] = []
    accounts = ServedAccountsCache()
    cache = CompileCache(accounts, DomainSetCache(fragments, accounts))
    with gc_paused():
        for host in hosts:
            try:
                targets.append(compile_host(inventory, roles, host, cache)[1])
            except PathError as exc:
                failures.append(CompileFailure(host, f"render: {exc}"))
            except Exception as exc:  # a template bug on one host must not hide the others
                failures.append(CompileFailure(host, f"render: {type(exc).__name__}: {exc}"))
    if fragments is not None:
        fragments.save()
    return targets, failures
