"""Observe a host: what the current release installed and what is on disk now.

`observe_host` is ONE on-host call in the steady state (the on-host script is uploaded only when
missing). `parse_host_state` turns the script's JSON answer into a `HostState` (pure).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from compiler.connectors.transport import Transport
from compiler.push.hostcall import HostError, activation_from_json, call_onhost
from compiler.types import FileTree, HostState, ManagedFile, ObservedFile


def observe_host(transport: Transport, desired: FileTree) -> HostState:
    """The state of every path the current release manages or `desired` names."""
    args = {
        # A sha prefix is enough to decide which contents the host sends back for diffs.
        "paths": {p: [f.sha256[:16], f.owner, f.group] for p, f in desired.items()},
        "sensitive": sorted(p for p, f in desired.items() if f.sensitive),
    }
    answer = call_onhost(transport, "observe", args)
    if not answer.get("ok"):
        raise HostError(transport.host, str(answer.get("step", "observe")), _message(answer))
    try:
        return parse_host_state(answer)
    except (KeyError, TypeError, ValueError) as exc:
        raise HostError(transport.host, "observe", f"malformed answer: {exc!r}") from exc


def parse_host_state(answer: Mapping[str, Any]) -> HostState:
    """`HostState` from the on-host `observe` answer."""
    files = {
        path: ObservedFile(
            sha256=str(f["sha256"]),
            mode=int(f["mode"]),
            owner=str(f["owner"]),
            group=str(f["group"]),
        )
        for path, f in answer.get("files", {}).items()
    }
    managed = {
        path: ManagedFile(
            sha256=str(m["sha256"]),
            mode=int(m["mode"]),
            owner=str(m["owner"]),
            group=str(m["group"]),
            role=str(m.get("role", "")),
            sensitive=bool(m.get("sensitive", False)),
        )
        for path, m in answer.get("managed", {}).items()
    }
    previous = {path: base64.b64decode(b64) for path, b64 in answer.get("previous", {}).items()}
    release = answer.get("release_id")
    interrupted = answer.get("interrupted")
    return HostState(
        release_id=str(release) if release else None,
        files=files,
        previous=previous,
        managed=managed,
        interrupted=str(interrupted) if interrupted else None,
        pending=tuple(activation_from_json(a) for a in answer.get("pending", ())),
    )


def _message(answer: Mapping[str, Any]) -> str:
    return str(answer.get("message") or "the on-host script failed without a message")
