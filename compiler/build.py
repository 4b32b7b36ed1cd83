"""One build session: where its caches live, and the pipeline assembled from the stages.

The CLI and library users enter here, so both get the fast path: the parse cache (load), the
per-domain fragments and compiled templates (render) and the output manifests (`render --out`),
with the garbage collector paused while the model graph is built. A session loads the
inventory and the roles once; every command then compiles, plans, applies or asks a host's
agent through it.

    session = BuildSession.open(Path("inventory"))           # default cache, no warnings
    targets, failures = session.compile()                    # every host

Cache directory layout: one directory per inventory (`--cache`, else one under
`$XDG_CACHE_HOME/mailcfg`; `cache.cachedir` decides whether it is safe, and the HMAC key is
never in it):

    <cache>/                   the parse cache's packs (`load.parsecache`)
    <cache>/fragments/         per-domain rows of the domain-set tables (`render.fragments`)
    <cache>/joined/            the joins of those rows, spliced after an edit (`render.joincache`)
    <cache>/templates/         the roles' compiled templates (`render.templatecache`)
    <cache>/outdir/<id>.json   the manifest of each `render --out` directory (`render.outdir`)

An unsafe cache directory is reported once through `warn` and the session runs without one.
Neither the cache nor a host's relative local `root` depends on the current directory: the
default cache is named by the inventory's resolved path, and a relative root lies below the
inventory directory.

Garbage-collector policy: paused while the inventory is loaded and the targets are compiled
(`cache.gcpause`; ~10^5 acyclic objects), and the result frozen (`gc.freeze`) after: it lives
until the process exits, and plan and apply go on allocating.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from compiler.cache.cachedir import CacheError, open_cache_dir, prepare_cache_dir

if TYPE_CHECKING:
    from compiler.connectors.transport import Transport
    from compiler.load.inventory import LoadedInventory
    from compiler.push.agentcall import AgentCall
    from compiler.push.apply import ReleaseInfo
    from compiler.push.fleet import HostResult, OpenTransport
    from compiler.render.roles import Roles
    from compiler.render.targets import Target
    from compiler.tools.dnsrecords import DnsPlan
    from compiler.tools.stats import StatsRow
    from compiler.types import Plan, Release
    from schemas.inventory import HostSpec

FRAGMENTS_SUBDIRECTORY = "fragments"
TEMPLATES_SUBDIRECTORY = "templates"
JOINED_SUBDIRECTORY = "joined"
Warn = Callable[[str], None]


class BuildError(ValueError):
    """A request the inventory cannot serve: no inventory, an unknown host, a host that does
    not render or has no agent. The message names it; the CLI prints it as one line."""


def _ignore(_: str) -> None:
    pass


@dataclass(slots=True)
class BuildSession:
    """One run over one inventory: its cache directory (None: no cache), its roles directory
    (None: the built-in one) and the directory a relative local root is taken from (None:
    the inventory directory, so a run gives the same hosts from any current directory)."""

    inventory_dir: Path
    roles_dir: Path | None = None
    cache: Path | None = None
    base_dir: Path | None = None
    warn: Warn = _ignore
    _loaded: LoadedInventory | None = None
    _roles: Roles | None = None

    @classmethod
    def open(
        cls,
        inventory_dir: Path,
        *,
        roles_dir: Path | None = None,
        cache_dir: Path | None = None,
        use_cache: bool = True,
        warn: Warn = _ignore,
    ) -> BuildSession:
        """A session with the cache `cache_dir` (None: the inventory's default one), made and
        checked; without a cache after one warning when it is not safe, or if not `use_cache`."""
        cache = None
        if use_cache and inventory_dir.is_dir():  # else `load` reports the inventory
            try:
                cache = open_cache_dir(cache_dir, inventory_dir)
            except CacheError as exc:
                warn(f"mailcfg: warning: {exc}; running without a cache")
        return cls(inventory_dir, roles_dir, cache, warn=warn)

    # --- load and render ------------------------------------------------------------------------

    def load(self) -> LoadedInventory:
        """The inventory, loaded once (its warnings go to `warn`)."""
        if self._loaded is None:
            from compiler.load.inventory import load_inventory

            if not self.inventory_dir.exists():
                raise BuildError(f"inventory {self.inventory_dir}: no such directory")
            self._loaded = load_inventory(self.inventory_dir, cache_dir=self.cache)
            for warning in self._loaded.warnings:
                self.warn(warning.format())
        return self._loaded

    def roles(self) -> Roles:
        if self._roles is None:
            from compiler.render.roles import default_roles_dir, load_roles

            code_cache = self.cache / TEMPLATES_SUBDIRECTORY if self.cache is not None else None
            self._roles = load_roles(
                self.roles_dir if self.roles_dir else default_roles_dir(), code_cache
            )
        return self._roles

    def hosts(self, wanted: Sequence[str] = ()) -> list[str]:
        """`wanted` (every host when empty), sorted; an unknown one is a `BuildError`."""
        known = self.load().inventory.hosts
        unknown = [h for h in wanted if h not in known]
        if unknown:
            raise BuildError(
                f"unknown host(s) {', '.join(unknown)}; the inventory has "
                f"{', '.join(sorted(known)) or 'none'}"
            )
        return sorted(set(wanted)) if wanted else sorted(known)

    def compile(self, hosts: Sequence[str] = ()) -> tuple[list[Target], list[HostResult]]:
        """Targets of `hosts` (every host when empty), and a failed result for each host
        that does not render."""
        from compiler.cache.gcpause import gc_paused
        from compiler.render.fragments import FragmentCache
        from compiler.render.targets import compile_targets

        with gc_paused():
            loaded = self.load()
            selected = self.hosts(hosts)
            inventory = loaded.inventory
            fragments = (
                FragmentCache.open(
                    self.cache / FRAGMENTS_SUBDIRECTORY,
                    inventory.domains,
                    loaded.domain_keys,
                    self.cache / JOINED_SUBDIRECTORY,
                )
                if self.cache is not None
                else None
            )
            roles = self.roles()
            targets, failures = compile_targets(inventory, roles, selected, fragments=fragments)
            roles.save_compiled()
            # The inventory and targets live until the process exits: keep their ~10^5 objects
            # out of every later collection (plan and apply go on allocating).
            gc.freeze()
        if not failures:
            return targets, []
        from compiler.push.fleet import HostResult, Outcome

        return targets, [HostResult(f.host, Outcome.FAILED, message=f.message) for f in failures]

    def compile_one(self, host: str) -> Target:
        targets, failures = self.compile([host])
        if failures:
            raise BuildError(f"{failures[0].host}: {failures[0].message}")
        return targets[0]

    def write_trees(self, targets: Sequence[Target], out: Path) -> Iterator[tuple[Target, int]]:
        """Write each target's tree to `out/<host>/`, yielding how many files it holds. Every
        host key is checked to name one directory below `out` before the first is written
        (the load refuses others already); `write_tree` also refuses a symbolic link."""
        from compiler.connectors.confine import plain_name
        from compiler.render.outdir import write_tree

        for target in targets:
            plain_name(target.name)
        for target in targets:
            manifest = self._manifest(out / target.name)
            yield target, write_tree(target.tree, out, manifest, name=target.name)

    def _manifest(self, host_dir: Path) -> Path | None:
        """The output manifest of `host_dir` under the cache, if its directory is safe."""
        from compiler.render.outdir import manifest_path

        if self.cache is None:
            return None
        path = manifest_path(self.cache, host_dir)
        try:
            prepare_cache_dir(path.parent, tighten=False)
        except CacheError:
            return None
        return path

    def dns_plan(self, hosts: Sequence[str] = ()) -> DnsPlan:
        """The DNS records of `hosts` (every host when empty) and of the domains they serve
        (`tools.dnsrecords`), from every host's resolved policy."""
        from compiler.load.layers import resolve_policy
        from compiler.render.roles import role_defaults
        from compiler.tools.dnsrecords import make_dns_plan

        selected, inventory = self.hosts(hosts), self.load().inventory
        defaults = role_defaults(self.roles())
        policies = {h: resolve_policy(inventory, h, defaults) for h in inventory.hosts}
        return make_dns_plan(inventory, policies, selected)

    # --- hosts ----------------------------------------------------------------------------------

    @property
    def local_base(self) -> Path:
        """The directory a relative local root lies below."""
        return self.base_dir if self.base_dir is not None else self.inventory_dir

    def open_host(self, name: str) -> Transport:
        return self._opener()(name, self.load().inventory.hosts[name])

    def _opener(self) -> OpenTransport:
        from compiler.push.connect import open_transport

        base_dir = self.local_base

        def open_host(name: str, spec: HostSpec) -> Transport:
            return open_transport(name, spec, base_dir=base_dir)

        return open_host

    def plan(
        self,
        targets: Sequence[Target],
        failures: Sequence[HostResult],
        forks: int | None = None,
    ) -> list[HostResult]:
        """Observe and plan every target in parallel (`forks` at once; None: the default of
        `push.fleet`); results (failures too) by host."""
        from compiler.push.fleet import DEFAULT_FORKS, plan_target, run_parallel

        by_name = {t.name: t for t in targets}
        opener = self._opener()
        results = run_parallel(
            sorted(by_name),
            lambda h: plan_target(by_name[h], opener),
            forks=DEFAULT_FORKS if forks is None else forks,
        )
        return _by_host([*results, *failures])

    def apply(
        self,
        targets: Sequence[Target],
        plans: Mapping[str, Plan],
        *,
        forks: int | None = None,
        keep_releases: int = 5,
    ) -> list[HostResult]:
        """Apply each host's shown plan in parallel, each as a new release."""
        from compiler.push.apply import make_release_id
        from compiler.push.fleet import DEFAULT_FORKS, apply_target, run_parallel

        by_name = {t.name: t for t in targets}
        opener = self._opener()

        def job(host: str) -> HostResult:
            plan = plans[host]
            release_id = make_release_id(datetime.now(UTC), plan.tree_digest)
            return apply_target(
                by_name[host], plan, opener, release_id=release_id, keep_releases=keep_releases
            )

        return run_parallel(sorted(plans), job, forks=DEFAULT_FORKS if forks is None else forks)

    def releases(self, host: str) -> tuple[ReleaseInfo, ...]:
        from compiler.push.apply import list_releases

        target = self.compile_one(host)
        transport = self._opener()(target.name, target.spec)
        try:
            return list_releases(transport)
        finally:
            transport.close()

    def rollback(self, host: str, to: str | None, warn: Warn) -> Release:
        """Reinstall release `to` (default: the previous one) with the activations of every
        role of the host; an `ApplyError` names the failed step."""
        from compiler.push.apply import rollback_release

        target = self.compile_one(host)
        host_roles = target.host_roles
        activations = tuple(a for a in target.activations if a.role in host_roles)
        transport = self._opener()(target.name, target.spec)
        try:
            return rollback_release(transport, activations=activations, to=to, warn=warn)
        finally:
            transport.close()

    def rollback_plan(self, host: str, to: str | None) -> tuple[str, Plan]:
        """The release a rollback to `to` (None: the previous one) would install, and the plan
        from the host's files now to it (`push.releasetree`)."""
        from compiler.push.releasetree import plan_rollback

        target = self.compile_one(host)
        activations = [a for a in target.activations if a.role in target.host_roles]
        transport = self._opener()(target.name, target.spec)
        try:
            return plan_rollback(transport, target.name, activations, to)
        finally:
            transport.close()

    # --- the hosts' agents ----------------------------------------------------------------------

    def agent_hosts(self, wanted: Sequence[str] = ()) -> list[str]:
        """`wanted` (every host with the agent role when empty), sorted; a host that is unknown
        or has no agent is a `BuildError`."""
        inventory = self.load().inventory
        if not wanted:
            hosts = sorted(h for h, spec in inventory.hosts.items() if "agent" in spec.roles)
            if not hosts:
                raise BuildError("no host of the inventory has the agent role")
            return hosts
        selected = self.hosts(wanted)
        for host in selected:
            if "agent" not in inventory.hosts[host].roles:
                raise BuildError(f"{host}: has no agent role")
        return selected

    def on_agents(
        self, hosts: Sequence[str], work: Callable[[AgentCall], HostResult]
    ) -> list[HostResult]:
        """`work` on the agent of each of `hosts` (`agent_hosts`), in parallel; a host that
        cannot be reached is a result, not an error."""
        from compiler.push.agentcall import make_agent_call
        from compiler.push.fleet import run_parallel
        from compiler.render.context import AGENT_CONFIG_NAME
        from compiler.render.resolve import resolve_host
        from compiler.render.roles import role_defaults

        loaded, defaults = self.load(), role_defaults(self.roles())
        where: dict[str, tuple[HostSpec, str, str]] = {}
        for host in self.agent_hosts(hosts):
            policy = resolve_host(loaded.inventory, host, defaults).policy
            config = f"{policy.paths.agent_config_dir.rstrip('/')}/{AGENT_CONFIG_NAME}"
            where[host] = (loaded.inventory.hosts[host], config, policy.policy_state)
        opener = self._opener()

        def job(host: str) -> HostResult:
            spec, config, state = where[host]
            transport = opener(host, spec)
            try:
                return work(make_agent_call(host, transport, config, state))
            finally:
                transport.close()

        return run_parallel(sorted(where), job)

    def unlock(self, hosts: Sequence[str], address: str) -> list[HostResult]:
        """Ask the agents of `hosts` (every one when empty) to lift `address`'s lock."""
        from compiler.push.agentcall import unlock_account

        return self.on_agents(hosts, lambda call: unlock_account(call, address))

    def agent_stats(
        self, hosts: Sequence[str], day: str | None, account: str | None
    ) -> tuple[list[StatsRow], list[HostResult]]:
        """The daily statistics of the agents of `hosts` (every one when empty), and what each
        host did: a host that does not answer is a failed result, the others' rows remain."""
        from compiler.push.fleet import HostResult, Outcome
        from compiler.tools.stats import StatsError, gather_stats

        rows: dict[str, list[StatsRow]] = {}

        def work(call: AgentCall) -> HostResult:
            options = ["--no-queue"] if call.local else []
            try:
                found = gather_stats(
                    [call.transport], day, account, options=[*call.options, *options]
                )
            except StatsError as exc:
                return HostResult(
                    call.host, Outcome.FAILED, message=str(exc).removeprefix(f"{call.host}: ")
                )
            rows[call.host] = found
            return HostResult(call.host, Outcome.OK, message=f"{len(found)} row(s)")

        results = self.on_agents(hosts, work)
        return [row for host in sorted(rows) for row in rows[host]], results


def _by_host(results: Sequence[HostResult]) -> list[HostResult]:
    return sorted(results, key=lambda r: r.host)
