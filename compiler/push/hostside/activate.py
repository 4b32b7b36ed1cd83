"""`activate`: reload and verify some roles' services outside an apply, with the current
release's own commands. certbot's renewal hook (`roles/acme`) runs it after it replaced the
TLS pair Postfix and Dovecot read only at (re)load:

    python3 -I -S /var/lib/mailcfg/onhost.pyz activate --root / --role dovecot --role postfix

Under the host lock (a renewal during an apply waits for it), after the recovery every change
starts with (an interrupted change is put back first, and its owed reloads run), the role's
activation is the one recorded by the newest stored release that changed the role, walking
back from the current one (`previous`): a release records only the roles it changed. Its apply
and verify commands run through `Transaction.activate` and `Transaction.verify`, as an apply
runs them. Nothing is installed or recorded, and a failure puts nothing back: the renewed pair
is the only one there is (certbot keeps the old ones in its archive).

Called on the host only, never by the controller: its documents are declared here, beside the
command (argv `--role` makes the request), and checked like the wire's.
"""

# The declarations are evaluated at run time by the wire's validator (Python 3.9): no
# `from __future__ import annotations`, and `Optional[...]`.
# ruff: noqa: UP045

import re
from typing import Literal, Optional, TypedDict

from .hostroot import Host, StepFailed
from .store import current_release, load_release
from .wire import ActivationDoc

_ROLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")


class ActivateRequest(TypedDict):
    roles: list[str]  # the roles whose services are reloaded and verified


class ActivateReply(TypedDict):
    ok: Literal[True]
    release_id: str  # the release whose commands ran
    roles: list[str]
    warnings: list[str]


def request_from_roles(roles: list[str]) -> ActivateRequest:
    """The request of `--role R` arguments."""
    return {"roles": list(roles)}


def find_activations(host: Host, release_id: str, roles: list[str]) -> list[ActivationDoc]:
    """Each of `roles`' activation as the newest stored release from `release_id` back
    recorded it, in role name order (as an apply runs them)."""
    bad = [r for r in roles if not _ROLE_RE.fullmatch(r)]
    if bad or not roles:
        raise StepFailed("input", f"activate needs role names (--role R), got {bad or 'none'}")
    wanted = set(roles)
    found: dict[str, ActivationDoc] = {}
    release: Optional[str] = release_id
    seen: set[str] = set()
    while release and release not in seen and wanted - found.keys():
        seen.add(release)
        try:
            record = load_release(host, release)
        except StepFailed:
            break  # pruned: older releases are gone too
        for activation in record["activations"]:
            if activation["role"] in wanted:
                found.setdefault(activation["role"], activation)
        release = record.get("previous")
    missing = sorted(wanted - found.keys())
    if missing:
        raise StepFailed(
            "activate",
            f"no stored release back from {release_id} changed role(s) {', '.join(missing)}, "
            "so their commands are unknown here: the next apply that changes them records "
            "them (the services keep running as they are)",
        )
    return [found[role] for role in sorted(found)]


def cmd_activate(host: Host, request: ActivateRequest, warnings: list[str]) -> ActivateReply:
    """Under the lock: recover, then the roles' apply and verify commands of the current
    release."""
    # Imported here: `onhost` imports this module for the declarations on every run, and
    # `observe` needs neither the lock nor the transaction's tar and install steps.
    from .hostlock import HostLock
    from .recover import recover_interrupted
    from .transaction import Transaction

    with HostLock(host, warnings, "activate"):
        recover_interrupted(host, warnings, run_reloads=True)
        current = current_release(host)
        if current is None:
            raise StepFailed("activate", "no current release: nothing to reload yet")
        tx = Transaction(host, warnings)
        tx.to_id = current
        tx.activations = find_activations(host, current, request["roles"])
        tx.activate()
        tx.verify()
    return {
        "ok": True,
        "release_id": current,
        "roles": [a["role"] for a in tx.activations],
        "warnings": warnings,
    }
