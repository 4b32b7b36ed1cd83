"""Apply a plan to a host as a release, roll back to a stored release, list releases.

The compiler side of the release engine: it packs the desired tree and the plan's activations
into one bundle (a tar with `release.json`, which also names what the host's roles need on the
machine), uploads it, and runs the on-host program's `apply`, which does unpack → provision
(packages, groups, users, directories, units) → stage → build → validate → record pending →
install → activate → verify → commit under the host lock, or reinstalls the previous release
on failure; a rollback goes through the same install → activate → verify → restore path
(`compiler/push/hostside/transaction.py`).
Requests and replies are the ones `compiler/push/hostside/wire.py` declares.
Two round trips per apply (upload, run) in the steady state.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from compiler.connectors.transport import Transport
from compiler.push.agentdist import AgentDistError, make_wheelhouse
from compiler.push.hostcall import STATE_DIR, HostError, Warn, activation_to_json, call_onhost
from compiler.push.hostneeds import needs_to_json
from compiler.push.hostside.wire import (
    AgentDoc,
    ApplyRequest,
    BundleDoc,
    ChangeReply,
    FileMeta,
    ReleasesReply,
    RollbackRequest,
)
from compiler.render.masking import masked_view
from compiler.types import Activation, FileTree, Plan, Release, RenderedFile

# Validate + reload of a large host can take a while; the on-host program bounds each command.
APPLY_TIMEOUT = 1800.0
# What a Ctrl-C during an apply means: the on-host transaction does not need the controller.
INTERRUPTED_NOTE = (
    "mailcfg: interrupted: hosts not started yet are left as they were; an apply already "
    "running goes on on its host and may still commit there (or roll back); waiting for those "
    "to end here (Ctrl-C again stops waiting, not them). `mailcfg plan` shows where each host "
    "is; an apply started meanwhile waits for the running one, then reports it by pid.\n"
)


class ApplyError(HostError):
    """An apply or rollback step failed on `host`; `message` carries the tool's own text.
    `rolled_back_to` is the release reinstalled after a failure past install (None when the
    live files were never touched or there was no previous release)."""


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    id: str
    tree_digest: str
    previous_id: str | None
    installed_at: int | None  # unix time, host clock
    files: int
    current: bool


def make_release_id(now: datetime, tree_digest: str) -> str:
    """Sortable UTC timestamp (microseconds, so two applies never collide) + digest prefix."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{tree_digest[:12]}"


def make_bundle(
    plan: Plan,
    tree: FileTree,
    *,
    activations: Sequence[Activation],
    release_id: str,
    keep_releases: int,
    role_activations: Sequence[Activation] | None = None,
) -> bytes:
    """The tar the host unpacks: `release.json` (a `wire.BundleDoc`) + `tree/<path>`, and
    `agent/<wheel>` for an agent the host lacks. `activations` run now; `role_activations`
    (every role's, default `activations`) are kept with the release for a rollback to it."""
    wheels: dict[str, bytes] = {}
    agent: AgentDoc | None = None
    if plan.agent is not None:
        if plan.agent.upload:
            wheels = make_wheelhouse(plan.agent.python, plan.agent.machine).read()
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in wheels.items()}
        agent = {"id": plan.agent.id, "version": plan.agent.version, "wheels": digests}
    doc: BundleDoc = {
        "id": release_id,
        "tree_digest": tree.digest,
        "expect_current": plan.current_release,
        "keep_releases": keep_releases,
        "files": {path: _file_meta(f) for path, f in tree.items()},
        "activations": [activation_to_json(a) for a in activations],
        "role_activations": [
            activation_to_json(a)
            for a in (activations if role_activations is None else role_activations)
        ],
        "needs": None if plan.needs is None else needs_to_json(plan.needs),
        "agent": agent,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        _add_member(tar, "release.json", json.dumps(doc, sort_keys=True).encode())
        for path, f in tree.items():
            _add_member(tar, "tree" + path, f.content)
        for name, data in wheels.items():
            _add_member(tar, f"agent/{name}", data)
    return buf.getvalue()


def _file_meta(f: RenderedFile) -> FileMeta:
    meta: FileMeta = {
        "sha256": f.sha256,
        "mode": f.mode,
        "owner": f.owner,
        "group": f.group,
        "role": f.role,
        "sensitive": f.sensitive,
    }
    shown = masked_view(f)
    if shown is not None:
        meta["shown"] = shown  # the masked view, for later plans' diffs
    return meta


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def apply_plan(
    plan: Plan,
    tree: FileTree,
    transport: Transport,
    *,
    release_id: str,
    activations: Sequence[Activation] | None = None,
    role_activations: Sequence[Activation] | None = None,
    keep_releases: int = 5,
    warn: Warn | None = None,
) -> Release:
    """Install `tree` on the host as release `release_id` and run the activations (default:
    the plan's). A plan without changes changes nothing and returns the current release.
    Raises ApplyError naming the failed step; the host is then back at its previous release."""
    if not plan.has_changes:
        return Release(plan.current_release or "", plan.tree_digest, None)
    if tree.digest != plan.tree_digest:
        raise ValueError(f"{plan.host}: the tree is not the one the plan was made from")
    try:
        bundle = make_bundle(
            plan,
            tree,
            activations=plan.activations if activations is None else activations,
            release_id=release_id,
            keep_releases=keep_releases,
            role_activations=role_activations,
        )
    except AgentDistError as exc:
        raise ApplyError(plan.host, "agent", str(exc)) from None
    bundle_path = f"{STATE_DIR}/incoming/{release_id}.tar.gz"
    transport.put(bundle_path, bundle, 0o600)
    request: ApplyRequest = {"bundle": bundle_path}
    answer = call_onhost(
        transport,
        "apply",
        request,
        ChangeReply,
        error=ApplyError,
        warn=warn,
        timeout=APPLY_TIMEOUT,
    )
    return Release(answer["release_id"], tree.digest, answer["previous"])


def rollback_release(
    transport: Transport,
    *,
    activations: Sequence[Activation],
    to: str | None = None,
    warn: Warn | None = None,
) -> Release:
    """Reinstall stored release `to` (default: the one before the current) and run the
    activations of the roles whose files differ (pass every role's activations)."""
    request: RollbackRequest = {
        "to": to or None,
        "activations": [activation_to_json(a) for a in activations],
    }
    answer = call_onhost(
        transport,
        "rollback",
        request,
        ChangeReply,
        error=ApplyError,
        warn=warn,
        timeout=APPLY_TIMEOUT,
    )
    return Release(answer["release_id"], "", answer["previous"])


def format_releases(host: str, releases: Sequence[ReleaseInfo]) -> str:
    """One line per release (`*` marks the current one), or that there is none."""
    if not releases:
        return f"{host}: no releases\n"
    lines = []
    for r in releases:
        when = (
            datetime.fromtimestamp(r.installed_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if r.installed_at
            else "-"
        )
        mark = "*" if r.current else " "
        lines.append(f"{mark} {r.id}  {when}  digest {r.tree_digest[:12]}  {r.files} file(s)\n")
    return "".join(lines)


def list_releases(transport: Transport) -> tuple[ReleaseInfo, ...]:
    """Releases stored on the host, oldest first."""
    answer = call_onhost(transport, "releases", {}, ReleasesReply, error=ApplyError)
    return tuple(
        ReleaseInfo(
            id=r["id"],
            tree_digest=r["tree_digest"],
            previous_id=r["previous"],
            installed_at=r["installed_at"],
            files=r["files"],
            current=r["current"],
        )
        for r in answer["releases"]
    )
