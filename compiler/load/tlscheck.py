"""The TLS warning of every load: a host that serves Debian's self-signed snakeoil pair.

The pair is the schema's default so that a first apply works on a fresh Debian host
(package ssl-cert), but no client can verify it: submission and IMAP clients must be told to
accept any certificate, and senders' TLS is never authenticated. So it is allowed, with a
warning on every run (`mailcfg plan` prints load warnings with their `file:line:col`) until the
host's policy names another pair or `tls.acme`; a `local` host (a directory standing for "/",
where no service runs and no client connects) is spared, so the example and previews stay quiet.

Runs on the raw `mailcfg.yml` (like the policy layers' own checks), so it needs no valid
inventory; a value of the wrong shape is left to validation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from compiler.load.diagnostics import DataPath, Diagnostic, Finding
from schemas.policy import SNAKEOIL_CERT, SNAKEOIL_KEY

_UNSET: Any = object()


def _tls_layers(raw: Mapping[str, Any], host: str) -> list[tuple[DataPath, Mapping[str, Any]]]:
    """The `tls` mapping of each policy layer of `host` that has one, lowest first."""
    spec = _mapping(_mapping(raw.get("hosts")).get(host))
    groups = _mapping(raw.get("groups"))
    layers: list[tuple[DataPath, Any]] = [(("policy",), raw.get("policy"))]
    for group in spec.get("groups") or []:
        if isinstance(group, str):
            layers.append((("groups", group, "policy"), _mapping(groups.get(group)).get("policy")))
    layers.append((("hosts", host, "policy"), spec.get("policy")))
    return [
        ((*prefix, "tls"), tls)
        for prefix, policy in layers
        if isinstance(tls := _mapping(policy).get("tls"), Mapping)
    ]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _effective(layers: list[tuple[DataPath, Mapping[str, Any]]], key: str) -> tuple[Any, DataPath]:
    """The value of `key` the highest layer sets (`_UNSET` if none) and where."""
    for prefix, tls in reversed(layers):
        if key in tls:
            return tls[key], (*prefix, key)
    return _UNSET, ()


def check_snakeoil(raw: Any, file: str, so_far: Iterable[Finding | Diagnostic]) -> list[Finding]:
    """A warning for each host whose TLS pair is the snakeoil one (by default or named),
    except a `local` host (a directory root: files only, no client ever connects to it).
    Only for an inventory without errors (`so_far`: the run's findings until now): it is
    about what a plan would install, and an error report stays about the errors."""
    findings: list[Finding] = []
    if not isinstance(raw, Mapping) or any(f.severity == "error" for f in so_far):
        return findings
    for host in _mapping(raw.get("hosts")):
        spec = _mapping(_mapping(raw.get("hosts")).get(host))
        if not isinstance(host, str) or spec.get("transport") == "local":
            continue  # a directory root: files only, no client ever connects
        layers = _tls_layers(raw, host)
        acme, _ = _effective(layers, "acme")
        if acme is not _UNSET and acme is not None:
            continue
        cert, cert_at = _effective(layers, "cert")
        key, key_at = _effective(layers, "key")
        snakeoil = [
            (value, where)
            for value, where, default in (
                (cert, cert_at, SNAKEOIL_CERT),
                (key, key_at, SNAKEOIL_KEY),
            )
            if value is _UNSET or value == default
        ]
        if not snakeoil:
            continue
        where = next((w for _, w in snakeoil if w), ("hosts", host))
        findings.append(
            Finding(
                file,
                where,
                f"host {host} serves Debian's self-signed snakeoil certificate "
                f"({SNAKEOIL_CERT}): no client can verify it; set policy.tls.acme to obtain "
                "one from an ACME CA, or tls.cert and tls.key",
                severity="warning",
                at_key=where == ("hosts", host),
            )
        )
    return findings
