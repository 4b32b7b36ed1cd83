"""Load the inventory directory into one validated, cross-checked `Inventory`.

`load_inventory` reads `mailcfg.yml` and `domains/*.yml`, parses them fast (`yamlload`), reuses
cached domain files (`parsecache`), validates with the schema models, merges and validates each
host's policy layers, runs the cross-file checks, and only then reads exact positions for the
files that have diagnostics. Every error of the run is raised together in `InventoryError`;
warnings (legacy hashes, dangling redirect targets...) come back with the inventory.
Pure: reads local files only (and writes the cache when asked to).

The inventory is untrusted (a pull request writes it; CI loads it). The directory given to
`load_inventory` is trusted; below it, `mailcfg.yml`, `domains` and each domain file are read
through `compiler.load.safefiles` (regular files only, never through a link, bounded size), so
no file outside the inventory is ever read or echoed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from compiler.cache.gcpause import gc_paused
from compiler.load.aliasdomains import check_alias_domains, valid_alias_domains
from compiler.load.crosscheck import (
    ANY_ADDRESS,
    DomainSource,
    check_domains,
    check_external_senders,
    check_hosts,
    check_postfix_main,
)
from compiler.load.diagnostics import (
    DataPath,
    Diagnostic,
    Finding,
    InventoryError,
    locate_findings,
    quote_value,
)
from compiler.load.layers import resolve_policy
from compiler.load.parsecache import CachedDomain, DomainCache
from compiler.load.safefiles import (
    DOMAIN_SUFFIXES,
    Refused,
    list_domain_files,
    open_directory,
    open_root,
    read_regular,
)
from compiler.load.tlscheck import check_snakeoil
from compiler.load.validate import findings_from_error, validate_data
from compiler.load.yamlload import YamlSyntaxError, load_positions, locate, parse_yaml
from schemas.domain import Domain, Name
from schemas.inventory import GroupSpec, HostSpec, Inventory, InventoryFile
from schemas.password import LEGACY_SCHEMES, is_legacy_hash, split_hash
from schemas.policy import ServerPolicy

INVENTORY_FILE = "mailcfg.yml"
DOMAINS_DIR = "domains"
_LEGACY_PREFIXES = tuple(f"{{{scheme}}}" for scheme in LEGACY_SCHEMES)


@dataclass(frozen=True, slots=True)
class LoadedInventory:
    inventory: Inventory
    warnings: tuple[Diagnostic, ...]
    files: tuple[str, ...]  # every file read, as named in diagnostics
    # Domain name → the parse cache's content key of its file (when loaded with a cache):
    # what `compiler.render.fragments` keys a domain's render rows by.
    domain_keys: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class LoadStats:
    """What a load did, for tests and benchmarks (the caller owns the object)."""

    parsed: list[str] = field(default_factory=list)  # parsed and validated this run
    cached: list[str] = field(default_factory=list)  # taken from the cache
    slow_path: list[str] = field(default_factory=list)  # parsed by ruamel instead of rapidyaml


@dataclass(slots=True)
class _Run:
    """Working state of one load (local to the call, never shared)."""

    contents: dict[str, bytes] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    located: list[Diagnostic] = field(default_factory=list)
    positions: dict[str, Any] = field(default_factory=dict)
    # The valid part of invalid domain files: cross-checked too, never used otherwise.
    partial: list[DomainSource] = field(default_factory=list)

    def locator(self, file: str, path: DataPath, at_key: bool) -> tuple[int, int] | None:
        if file not in self.positions:
            data = self.contents.get(file)
            self.positions[file] = load_positions(data) if data is not None else None
        root = self.positions[file]
        return locate(root, path, at_key) if root is not None else None


def load_inventory(
    path: Path, *, cache_dir: Path | None = None, stats: LoadStats | None = None
) -> LoadedInventory:
    """Load the inventory at `path` (the directory, or its `mailcfg.yml`)."""
    with gc_paused():
        return _load(Path(path), cache_dir, stats)


def _load(path: Path, cache_dir: Path | None, stats: LoadStats | None) -> LoadedInventory:
    main = path if path.is_file() or path.suffix in DOMAIN_SUFFIXES else path / INVENTORY_FILE
    root = main.parent
    stats = stats if stats is not None else LoadStats()
    run = _Run()
    cache = DomainCache.open(cache_dir) if cache_dir is not None else None

    main_name = str(main)
    root_fd = open_root(root)
    try:
        raw_main = _read(run, root_fd, main, stats, missing=f"no {INVENTORY_FILE} in {root}")
        inv_file: InventoryFile | None = None
        if raw_main is not _FAILED:
            inv_file, findings = validate_data(InventoryFile, raw_main, file=main_name)
            run.findings.extend(findings)
            run.findings.extend(check_postfix_main(raw_main, file=main_name))

        sources, keys = _load_domains(run, root_fd, root / DOMAINS_DIR, cache, stats)
    finally:
        if root_fd is not None:
            os.close(root_fd)
    if cache is not None:
        cache.save()

    domains: dict[str, Domain] = {}
    domain_files: dict[str, str] = {}
    domain_keys: dict[str, str] = {}
    for src in sources:
        if src.domain.domain not in domains or src.stem == src.domain.domain:
            domains[src.domain.domain] = src.domain
            domain_files[src.domain.domain] = src.file
            if cache is not None:
                domain_keys[src.domain.domain] = keys[src.file]
    # Hosts may name a domain whose file is invalid: the file's errors are reported already.
    for src in run.partial:
        domain_files.setdefault(src.domain.domain, src.file)
    aliases = valid_alias_domains(raw_main, domain_files) if raw_main is not _FAILED else {}
    run.findings.extend(check_domains([*sources, *run.partial], aliases))

    policy = None
    if raw_main is not _FAILED:
        # Policy layers and host references are checked on the raw data, so their errors are
        # reported even when other parts of mailcfg.yml are invalid.
        policy, findings = validate_data(
            ServerPolicy, _mapping(raw_main, "policy"), file=main_name, prefix=("policy",)
        )
        run.findings.extend(findings)
        run.findings.extend(_check_host_policies(raw_main, policy, main_name))
        run.findings.extend(check_hosts(raw_main, domain_files, file=main_name))
        run.findings.extend(check_external_senders(raw_main, domain_files, file=main_name))
        run.findings.extend(check_alias_domains(raw_main, domain_files, file=main_name))
        run.findings.extend(check_snakeoil(raw_main, main_name, [*run.findings, *run.located]))

    inventory = None
    if inv_file is not None and policy is not None:
        inventory = Inventory(
            schema_version=inv_file.schema_version,
            hosts=inv_file.hosts,
            groups=inv_file.groups,
            policy=policy,
            domains=dict(sorted(domains.items())),
            alias_domains=dict(sorted(inv_file.alias_domains.items())),
            dns=inv_file.dns,
            web=inv_file.web,
        )

    diagnostics = sorted(
        [*run.located, *locate_findings(run.findings, run.locator)], key=Diagnostic.sort_key
    )
    if inventory is None or any(d.severity == "error" for d in diagnostics):
        raise InventoryError(diagnostics)
    return LoadedInventory(
        inventory=inventory,
        warnings=tuple(diagnostics),
        files=tuple(run.contents),
        domain_keys=domain_keys,
    )


_FAILED: Any = object()


def _read_bytes(run: _Run, dir_fd: int | None, file: Path, *, missing: str) -> bytes | None:
    """The content of one inventory file, or None with a diagnostic recorded."""
    name = str(file)
    try:
        if dir_fd is None:
            raise FileNotFoundError
        data = read_regular(file.name, dir_fd)
    except FileNotFoundError:
        message = missing
    except Refused as exc:
        message = str(exc)
    except OSError as exc:
        message = f"cannot read: {exc.strerror}"
    else:
        run.contents[name] = data
        return data
    run.located.append(Diagnostic(name, None, None, "", message))
    return None


def _read(run: _Run, dir_fd: int | None, file: Path, stats: LoadStats, *, missing: str) -> Any:
    """Read and parse one file; record a located diagnostic and return _FAILED on failure."""
    data = _read_bytes(run, dir_fd, file, missing=missing)
    if data is None:
        return _FAILED
    return _parse(run, str(file), data, stats)


def _parse(run: _Run, name: str, data: bytes, stats: LoadStats) -> Any:
    try:
        result = parse_yaml(data)
    except YamlSyntaxError as exc:
        run.located.append(Diagnostic(name, exc.line, exc.col, "", exc.message))
        return _FAILED
    if not result.fast:
        stats.slow_path.append(name)
    if result.data is None:
        run.located.append(
            Diagnostic(name, 1, 1, "", "the file is empty; expected a mapping of keys to values")
        )
        return _FAILED
    if not isinstance(result.data, Mapping):
        message = f"expected a mapping of keys to values, found {_kind_of(result.data, data)}"
        run.located.append(Diagnostic(name, 1, 1, "", message))
        return _FAILED
    return result.data


def _open_domains(run: _Run, root_fd: int | None, directory: Path) -> int | None:
    """The `domains` directory's descriptor; None when there is none or it is refused (a link
    or not a directory: recorded as an error)."""
    if root_fd is None:
        return None
    try:
        return open_directory(directory.name, root_fd)
    except FileNotFoundError:
        return None
    except Refused as exc:
        message = str(exc)
    except OSError as exc:
        message = f"cannot read: {exc.strerror}"
    run.located.append(Diagnostic(str(directory), None, None, "", message))
    return None


def _kind_of(value: Any, data: bytes) -> str:
    """What a file holds instead of a mapping. A plain scalar folds every line of whatever
    file this is (a copied key...) into one string: only a one-line file's value is quoted,
    otherwise its first line."""
    if isinstance(value, list):
        return "a list"
    lines = data.strip().split(b"\n", 1)
    if len(lines) == 1:
        return f"the value {quote_value(value)}"
    first_line = lines[0][:1024].decode("utf-8-sig", "replace")
    return f"a value of several lines; the file starts with {quote_value(first_line)}"


def _load_domains(
    run: _Run, root_fd: int | None, directory: Path, cache: DomainCache | None, stats: LoadStats
) -> tuple[list[DomainSource], dict[str, str]]:
    """The valid domain files, and each one's cache key by file name."""
    dir_fd = _open_domains(run, root_fd, directory)
    if dir_fd is None:
        return [], {}
    try:
        return _loadlist_domain_files(run, dir_fd, directory, cache, stats)
    finally:
        os.close(dir_fd)


def _loadlist_domain_files(
    run: _Run, dir_fd: int, directory: Path, cache: DomainCache | None, stats: LoadStats
) -> tuple[list[DomainSource], dict[str, str]]:
    sources: list[DomainSource] = []
    keys: dict[str, str] = {}
    for filename in list_domain_files(dir_fd):
        file = directory / filename
        name = str(file)
        data = _read_bytes(run, dir_fd, file, missing="the file disappeared while reading")
        if data is None:
            continue
        key = cache.key(data) if cache is not None else ""
        entry = cache.get(key) if cache is not None else None
        if entry is not None:
            stats.cached.append(name)
        else:
            entry = _validate_domain(run, name, file.stem, data, stats)
            if entry is None:
                continue
            if cache is not None:
                cache.put(key, entry)
        keys[name] = key
        run.located.extend(replace(w, file=name) for w in entry.warnings)
        sources.append(DomainSource(file=name, stem=file.stem, domain=entry.domain))
    return sources, keys


def _validate_domain(
    run: _Run, name: str, stem: str, data: bytes, stats: LoadStats
) -> CachedDomain | None:
    stats.parsed.append(name)
    raw = _parse(run, name, data, stats)
    if raw is _FAILED:
        return None
    domain, findings = validate_data(Domain, raw, file=name)
    if domain is None:
        run.findings.extend(findings)
        partial = _valid_part(raw, findings, name, stem)
        if partial is not None:
            run.partial.append(partial)
            run.findings.extend(_legacy_hashes(partial.domain, name, partial.account_at))
        return None
    warnings = locate_findings(_legacy_hashes(domain, name), run.locator)
    return CachedDomain(domain, tuple(replace(w, file="") for w in warnings))


def _valid_part(raw: Any, findings: Sequence[Finding], file: str, stem: str) -> DomainSource | None:
    """The domain without its invalid accounts and redirects (None if the rest is invalid
    too), so that cross-file checks still see every valid declaration of a broken file."""
    if not isinstance(raw, Mapping):
        return None
    bad: dict[str, set[int]] = {"accounts": set(), "redirects": set()}
    for f in findings:  # other keys (admins, unknown ones) do not matter to cross-checks
        if len(f.path) >= 2 and f.path[0] in bad and isinstance(f.path[1], int):
            bad[str(f.path[0])].add(f.path[1])
    data = {"domain": raw.get("domain")}
    kept: dict[str, tuple[int, ...]] = {}
    invalid_names: list[str | None] = []
    for section in ("accounts", "redirects"):
        items = raw.get(section)
        if items is not None and not isinstance(items, list):
            invalid_names.append(None)  # a whole section unreadable: its names are unknown
        items = items if isinstance(items, list) else []
        kept[section] = tuple(i for i in range(len(items)) if i not in bad[section])
        data[section] = [items[i] for i in kept[section]]
        invalid_names += _declared_names(items[i] for i in sorted(bad[section]) if i < len(items))
    try:
        domain = Domain.model_validate(data)
    except ValidationError:
        return None
    invalid = frozenset(
        domain.address_of(n) if n is not None else ANY_ADDRESS + domain.domain
        for n in invalid_names
    )
    return DomainSource(file, stem, domain, kept["accounts"], kept["redirects"], invalid)


_NAME = TypeAdapter(Name)


def _declared_names(items: Iterable[Any]) -> list[str | None]:
    """The names invalid accounts or redirects declare: a valid name (only something else
    about the object is wrong), or None where it is missing or not a string (unknown, so
    any address of the domain may be it). An invalid name is left out: no valid redirect
    target can equal it."""
    names: list[str | None] = []
    for item in items:
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            names.append(None)
            continue
        with suppress(ValidationError):
            names.append(_NAME.validate_python(name))
    return names


def _legacy_hashes(domain: Domain, file: str, index: Callable[[int], int] = int) -> list[Finding]:
    findings = []
    for i, acc in enumerate(domain.accounts):
        if acc.password.startswith(_LEGACY_PREFIXES) and is_legacy_hash(acc.password):
            scheme = split_hash(acc.password)[0]
            findings.append(
                Finding(
                    file,
                    ("accounts", index(i), "password"),
                    f"{{{scheme}}} is a legacy password scheme (weak; accepted for migration "
                    "only); make a new hash with `mailcfg passwd` (BLF-CRYPT or SHA512-CRYPT)",
                    severity="warning",
                )
            )
    return findings


def _mapping(raw: Any, *keys: Any) -> dict[str, Any]:
    """raw[k1][k2]... when every step is a mapping, else {}."""
    for key in keys:
        raw = raw.get(key) if isinstance(raw, Mapping) else None
    return dict(raw) if isinstance(raw, Mapping) else {}


def _check_host_policies(
    raw: Any, inventory_policy: ServerPolicy | None, file: str
) -> list[Finding]:
    """Validate each host's merged policy with `resolve_policy`; place each error in the
    deepest layer that sets the key (host, then its groups from last to first, then the
    inventory's policy). Runs on the raw file: the hosts and groups need not be valid."""
    hosts = _mapping(raw, "hosts")
    groups = {
        name: GroupSpec.model_construct(policy=_mapping(spec, "policy"))
        for name, spec in _mapping(raw, "groups").items()
    }
    specs = {}
    for name, spec in hosts.items():
        host_groups = spec.get("groups") if isinstance(spec, Mapping) else None
        host_groups = [g for g in host_groups or [] if isinstance(g, str) and g in groups]
        specs[name] = HostSpec.model_construct(
            address="", hostname="", groups=host_groups, policy=_mapping(spec, "policy")
        )
    # Unvalidated stand-in: resolve_policy only reads the policy layers and group names.
    inv = Inventory.model_construct(
        hosts=specs, groups=groups, policy=inventory_policy or ServerPolicy()
    )
    findings: list[Finding] = []
    for host, spec in specs.items():
        layers: list[tuple[DataPath, Mapping[str, Any]]] = [
            (("hosts", host, "policy"), spec.policy)
        ]
        layers += [(("groups", g, "policy"), groups[g].policy) for g in reversed(spec.groups)]
        if inventory_policy is not None:
            layers.append((("policy",), _mapping(raw, "policy")))
        try:
            resolve_policy(inv, host)
        except ValidationError as exc:
            findings += findings_from_error(
                exc, ServerPolicy, file=file, prefix_for=_layer_chooser(file, layers)
            )
    return findings


def _layer_chooser(file: str, layers: Sequence[tuple[DataPath, Mapping[str, Any]]]) -> Any:
    def choose(path: DataPath) -> tuple[str, DataPath]:
        best_prefix, best_depth = layers[0][0], 0
        for prefix, data in layers:
            depth = _depth(data, path)
            if depth > best_depth:
                best_prefix, best_depth = prefix, depth
        return file, best_prefix

    return choose


def _depth(data: Any, path: DataPath) -> int:
    """How many leading items of `path` exist in nested mappings/lists of `data`."""
    depth = 0
    for item in path:
        in_map = isinstance(data, Mapping) and item in data
        in_list = isinstance(data, list) and isinstance(item, int) and 0 <= item < len(data)
        if not (in_map or in_list):
            break
        data = data[item]
        depth += 1
    return depth


__all__ = ["LoadStats", "LoadedInventory", "load_inventory"]
