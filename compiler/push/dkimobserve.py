"""The DKIM public keys the hosts hold, read back for `mailcfg dns` and `mailcfg doctor`.

A host with `policy.dkim` (and the postfix role) makes its key at the first apply (the rspamd
role's `build`) and keeps the public record beside it (`compiler.render.filtering`). It is read
with the on-host program's `observe`, one round trip per signing host: the record's path is
asked for as a file the host does not have yet (no sha), so observe sends its content back as
it does for a diff. No new wire field: the on-host side is unchanged.

What a host cannot give (unreachable, key not made yet, a record that does not parse) becomes
a note, and its domains get no DKIM record from it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from compiler.connectors.transport import Transport, TransportError
from compiler.push.hostcall import HostError, call_onhost
from compiler.push.hostside.wire import ObserveReply, ObserveRequest
from compiler.render.filtering import DkimSigning, make_dkim_signing
from compiler.render.resolve import HostConfig, resolve_host
from compiler.tools.dkimkeys import make_dkim_keys
from compiler.tools.dnsrecords import DkimKey, DkimState, DnsPlan, make_dns_plan
from schemas.inventory import Inventory

OpenHost = Callable[[str], Transport]


@dataclass(frozen=True, slots=True)
class ObservedKeys:
    keys: tuple[DkimKey, ...]
    notes: tuple[str, ...]


def signing_hosts(configs: Mapping[str, HostConfig]) -> dict[str, DkimSigning]:
    """The hosts that sign (postfix role and policy.dkim), with their key's files."""
    found = {}
    for name, cfg in sorted(configs.items()):
        signing = make_dkim_signing(cfg)
        if signing is not None and "postfix" in {str(r) for r in cfg.spec.roles}:
            found[name] = signing
    return found


def read_dkim_records(transport: Transport, signing: DkimSigning) -> dict[str, str]:
    """The host's public record files by path, of those it has (one observe call)."""
    paths = [k.record_path for k in signing.published]
    request: ObserveRequest = {
        "paths": {path: ("", "root", "root") for path in paths},
        "sensitive": [],
        "needs": None,
    }
    answer = call_onhost(transport, "observe", request, ObserveReply)
    found = {}
    for path in paths:
        content = answer["previous"].get(path)
        if content is None:
            continue
        try:
            found[path] = base64.b64decode(content, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raise HostError(transport.host, "observe", f"{path} is not ASCII") from None
    return found


def host_dkim_keys(
    name: str, sign: DkimSigning, records: Mapping[str, str]
) -> tuple[list[DkimKey], list[str]]:
    """The keys of one host from its record files by path (`read_dkim_records`), each with its
    place in a rotation, and notes for what is missing or unusable."""
    keys: list[DkimKey] = []
    notes: list[str] = []
    for files in sign.published:
        where = f"{name}: DKIM selector {files.selector}"
        text = records.get(files.record_path)
        state: DkimState = (
            "retired" if files in sign.retired else "next" if files == sign.upcoming else "signing"
        )
        if text is None:
            notes.append(
                f"{where}: retired, no key on the host: no record"
                if state == "retired"
                else f"{where}: no key yet; `mailcfg apply` makes it (rspamd role)"
            )
            continue
        try:
            made = make_dkim_keys(sign.domains, files.selector, text)
            keys += [
                replace(
                    k,
                    state=state,
                    retired=files.retired,
                    keep_days=sign.keep_days,
                    prefix=files.prefix,
                    current=sign.signing.prefix,
                )
                for k in made
            ]
        except ValueError as exc:
            notes.append(f"{where}: {files.record_path} is unusable ({exc})")
            continue
        if state == "retired" and files.retired is not None:
            until = files.retired + timedelta(days=sign.keep_days)
            notes.append(
                f"{where}: retired on {files.retired}: keep its record until {until}, then "
                f"remove it and drop {files.prefix} from retired_selectors"
            )
    if sign.upcoming is not None:
        notes.append(
            f"{name}: DKIM rotation to {sign.upcoming.selector}: publish its record; the host "
            f"signs with it besides {sign.selector} once the DNS serves it, and `mailcfg "
            "doctor` says when to make it the selector"
        )
    return keys, notes


def observe_dkim_keys(configs: Mapping[str, HostConfig], open_host: OpenHost) -> ObservedKeys:
    """Every signing host's keys (signing, next and retired), for the domains it signs for;
    notes for what a host cannot give and for the domains nobody signs."""
    keys: list[DkimKey] = []
    notes: list[str] = []
    signing = signing_hosts(configs)
    for name, sign in signing.items():
        try:
            transport = open_host(name)
            try:
                records = read_dkim_records(transport, sign)
            finally:
                transport.close()
        except (TransportError, HostError) as exc:
            notes.append(f"{name}: DKIM keys not read ({exc}); no records from this host")
            continue
        found, said = host_dkim_keys(name, sign, records)
        keys += found
        notes += said
    signed = {d for s in signing.values() for d in s.domains}
    unsigned = sorted({d for cfg in configs.values() for d in _served(cfg)} - signed)
    if unsigned:
        notes.append(
            f"DKIM: no host signs for {', '.join(unsigned)}; set policy.dkim (rspamd role)"
        )
    return ObservedKeys(tuple(keys), tuple(notes))


def _served(cfg: HostConfig) -> Sequence[str]:
    if "postfix" not in {str(r) for r in cfg.spec.roles}:
        return ()
    return (*cfg.domain_names, *cfg.alias_domains)


def observed_dns_plan(
    inventory: Inventory,
    defaults: Mapping[str, Any],
    selected: Sequence[str],
    open_host: OpenHost,
) -> DnsPlan:
    """`make_dns_plan` with the keys the signing hosts hold (every host's: a domain's DKIM
    records name every host that signs for it, whichever hosts are selected)."""
    configs = {name: resolve_host(inventory, name, defaults) for name in inventory.hosts}
    observed = observe_dkim_keys(configs, open_host)
    policies = {name: cfg.policy for name, cfg in configs.items()}
    return make_dns_plan(inventory, policies, selected, observed.keys, observed.notes)
