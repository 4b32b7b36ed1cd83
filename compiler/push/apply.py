"""Apply a plan to a host as a release, roll back to a stored release, list releases.

The compiler side of the release engine: it packs the desired tree and the plan's activations
into one bundle (a tar with `release.json`), uploads it, and runs the on-host script's `apply`,
which does stage → build → validate → record pending → install → activate → verify → commit
under the host lock, or reinstalls the previous release on failure (see
`compiler/push/hostside/onhost.py`).
Two round trips per apply (upload, run) in the steady state.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from compiler.connectors.transport import Transport
from compiler.push.hostcall import STATE_DIR, HostError, activation_to_json, call_onhost
from compiler.types import Activation, FileTree, Plan, Release

Warn = Callable[[str], None]
# Validate + reload of a large host can take a while; the on-host script bounds each command.
APPLY_TIMEOUT = 1800.0


class ApplyError(HostError):
    """An apply or rollback step failed on `host`; `message` carries the tool's own text.
    `rolled_back_to` is the release reinstalled after a failure past install (None when the
    live files were never touched or there was no previous release)."""

    def __init__(
        self,
        host: str,
        step: str,
        message: str,
        rolled_back_to: str | None = None,
        rollback_errors: Sequence[str] = (),
    ) -> None:
        super().__init__(host, step, message)
        self.rolled_back_to = rolled_back_to
        self.rollback_errors = tuple(rollback_errors)


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
) -> bytes:
    """The tar the host unpacks: `release.json` + `tree/<path>`."""
    doc = {
        "id": release_id,
        "tree_digest": tree.digest,
        "expect_current": plan.current_release,
        "keep_releases": keep_releases,
        "files": {
            path: {
                "sha256": f.sha256,
                "mode": f.mode,
                "owner": f.owner,
                "group": f.group,
                "role": f.role,
                "sensitive": f.sensitive,
            }
            for path, f in tree.items()
        },
        "activations": [activation_to_json(a) for a in activations],
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        _add_member(tar, "release.json", json.dumps(doc, sort_keys=True).encode())
        for path, f in tree.items():
            _add_member(tar, "tree" + path, f.content)
    return buf.getvalue()


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
    bundle = make_bundle(
        plan,
        tree,
        activations=plan.activations if activations is None else activations,
        release_id=release_id,
        keep_releases=keep_releases,
    )
    bundle_path = f"{STATE_DIR}/incoming/{release_id}.tar.gz"
    transport.put(bundle_path, bundle, 0o600)
    answer = call_onhost(transport, "apply", {"bundle": bundle_path}, timeout=APPLY_TIMEOUT)
    _report_warnings(answer, warn)
    if not answer.get("ok"):
        raise _apply_error(transport.host, answer)
    return Release(str(answer["release_id"]), tree.digest, _opt(answer.get("previous")))


def rollback_release(
    transport: Transport,
    *,
    activations: Sequence[Activation],
    to: str | None = None,
    warn: Warn | None = None,
) -> Release:
    """Reinstall stored release `to` (default: the one before the current) and run the
    activations of the roles whose files differ (pass every role's activations)."""
    args: dict[str, Any] = {"activations": [activation_to_json(a) for a in activations]}
    if to:
        args["to"] = to
    answer = call_onhost(transport, "rollback", args, timeout=APPLY_TIMEOUT)
    _report_warnings(answer, warn)
    if not answer.get("ok"):
        raise _apply_error(transport.host, answer)
    return Release(str(answer["release_id"]), "", _opt(answer.get("previous")))


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
    answer = call_onhost(transport, "releases", {})
    if not answer.get("ok"):
        raise _apply_error(transport.host, answer)
    return tuple(
        ReleaseInfo(
            id=str(r["id"]),
            tree_digest=str(r.get("tree_digest", "")),
            previous_id=_opt(r.get("previous")),
            installed_at=int(r["installed_at"]) if r.get("installed_at") else None,
            files=int(r.get("files", 0)),
            current=bool(r.get("current")),
        )
        for r in answer.get("releases", ())
    )


def _apply_error(host: str, answer: dict[str, Any]) -> ApplyError:
    return ApplyError(
        host,
        str(answer.get("step", "apply")),
        str(answer.get("message") or "failed without a message"),
        rolled_back_to=_opt(answer.get("rolled_back_to")),
        rollback_errors=[str(e) for e in answer.get("rollback_errors", ())],
    )


def _report_warnings(answer: dict[str, Any], warn: Warn | None) -> None:
    if warn is not None:
        for text in answer.get("warnings", ()):
            warn(str(text))


def _opt(value: object) -> str | None:
    return str(value) if value else None
