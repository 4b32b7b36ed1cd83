"""The server-level alias domains of `mailcfg.yml` (`alias_domains: {example.net: example.com}`):
which are valid, and what is wrong with the others.

An alias domain is declared by the server team, never in a domain file: a domain's admins own
their file, and an alias of a name they do not own would capture the mail local users send to
that name and make port 25 refuse its real senders. So an alias must not be a domain of the
inventory, must map to one, and must not map to another alias (no chains: Postfix's rows are
made one level deep). Checked on the raw file, so the errors come with the rest of the file's.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

from compiler.load.diagnostics import Finding
from schemas.common import check_domain


def _domain(value: Any) -> str | None:
    """A well-formed domain name, lower case, or None (the schema reports a malformed one)."""
    if not isinstance(value, str):
        return None
    try:
        return check_domain(value)
    except ValueError:
        return None


def _raw_aliases(raw: Any) -> list[tuple[Any, str, str]]:
    """(key as written, alias, target) of each well-formed entry of the raw file."""
    entries = raw.get("alias_domains") if isinstance(raw, Mapping) else None
    if not isinstance(entries, Mapping):
        return []
    out = []
    for key, value in entries.items():
        alias, target = _domain(key), _domain(value)
        if alias is not None and target is not None:
            out.append((key, alias, target))
    return out


def check_alias_domains(raw: Any, domains: Container[str], *, file: str) -> list[Finding]:
    """Each alias domain of the raw inventory file (`domains`: the inventory's domains) is
    no domain of the inventory, and maps to one that is no alias itself."""
    entries = _raw_aliases(raw)
    aliases = {alias: target for _, alias, target in entries}
    findings = []
    for key, alias, target in entries:
        path = ("alias_domains", key)
        if alias in domains:
            findings.append(
                Finding(
                    file,
                    path,
                    f"{alias} is a domain of the inventory (domains/{alias}.yml): an alias "
                    "domain has no domain file; remove one of the two",
                    at_key=True,
                )
            )
        elif target in aliases:
            findings.append(
                Finding(
                    file,
                    path,
                    f"{target} is itself an alias domain (of {aliases[target]}): an alias "
                    f"must name a domain with a domain file; map {alias} to "
                    f"{aliases[target]} directly",
                )
            )
        elif target not in domains:
            findings.append(
                Finding(
                    file,
                    path,
                    f"unknown domain {target!r}: there is no domains/{target}.yml (an alias "
                    "domain delivers as a domain of the inventory)",
                )
            )
    return findings


def valid_alias_domains(raw: Any, domains: Container[str]) -> dict[str, str]:
    """The alias domains of the raw inventory file that `check_alias_domains` accepts."""
    entries = _raw_aliases(raw)
    aliases = {alias for _, alias, _ in entries}
    return {
        alias: target
        for _, alias, target in entries
        if alias not in domains and target in domains and target not in aliases
    }


def alias_domain_hint(raw: Any, domain: str) -> str:
    """What to say when a host names `domain` and it is an alias domain; else ""."""
    for _, alias, target in _raw_aliases(raw):
        if alias == domain:
            return (
                f"; {alias} is an alias domain of {target}: it is served by the hosts that "
                f"serve {target}"
            )
    return ""
