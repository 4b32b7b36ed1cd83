"""Observe a host: what the current release installed and what is on disk now.

`observe_host` is ONE on-host call in the steady state (the on-host program is uploaded only
when missing). `parse_host_state` turns its reply (`wire.ObserveReply`, checked on arrival)
into a `HostState` (pure). Given the host's needs (`HostNeeds`; None for a local root), the
same call reports the machine's facts, and a machine mailcfg must not change (an unsupported
release, a user with another uid: `hostneeds.machine_problems`) is an error here, at plan
time, before anything is uploaded.
"""

from __future__ import annotations

import base64
import binascii
import json

from compiler.connectors.transport import Transport
from compiler.push.hostcall import HostError, activation_from_json, call_onhost
from compiler.push.hostneeds import facts_from_json, machine_problems, needs_to_json
from compiler.push.hostside.wire import ObserveReply, ObserveRequest
from compiler.types import FileTree, HostNeeds, HostState, ManagedFile, ObservedFile


def observe_host(
    transport: Transport, desired: FileTree, needs: HostNeeds | None = None
) -> HostState:
    """The state of every path the current release manages or `desired` names, and of the
    machine's `needs` (None: no machine facts, a local root)."""
    request: ObserveRequest = {
        # A sha prefix is enough to decide which contents the host sends back for diffs.
        "paths": {p: (f.sha256[:16], f.owner, f.group) for p, f in desired.items()},
        "sensitive": sorted(p for p, f in desired.items() if f.sensitive),
        "needs": None if needs is None else needs_to_json(needs),
    }
    answer = call_onhost(transport, "observe", request, ObserveReply)
    try:
        state = parse_host_state(answer)
    except ValueError as exc:
        raise HostError(transport.host, "observe", f"malformed reply: {exc}") from None
    if needs is not None and state.system is not None:
        problems = machine_problems(needs, state.system)
        if problems:
            raise HostError(transport.host, "facts", "; ".join(problems))
    return state


def parse_host_state(answer: ObserveReply) -> HostState:
    """`HostState` from the on-host `observe` reply; ValueError for content that is not
    base64."""
    files = {
        path: ObservedFile(sha256=f["sha256"], mode=f["mode"], owner=f["owner"], group=f["group"])
        for path, f in answer["files"].items()
    }
    managed = {
        path: ManagedFile(
            sha256=m["sha256"],
            mode=m["mode"],
            owner=m["owner"],
            group=m["group"],
            role=m["role"],
            sensitive=m["sensitive"],
            shown=m.get("shown"),
        )
        for path, m in answer["managed"].items()
    }
    return HostState(
        release_id=answer["release_id"] or None,
        files=files,
        previous={path: _content(path, b64) for path, b64 in answer["previous"].items()},
        managed=managed,
        interrupted=answer["interrupted"] or None,
        pending=tuple(activation_from_json(a) for a in answer["pending"]),
        system=None if answer["system"] is None else facts_from_json(answer["system"]),
    )


def _content(path: str, b64: str) -> bytes:
    try:
        return base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise ValueError(f"previous[{json.dumps(path)}]: expected base64 content") from None
