"""What a rollback would change, before it runs: a stored release read back from its host, and
the plan that takes the host from what is on it now to that release.

`plan_rollback` is what `mailcfg rollback` shows (in the plan formats of `compiler.push.show`)
before it asks. The release's files come from the host's release store
(`<STATE_DIR>/releases/<id>/release.json` and `tree/<path>`, see
`compiler/push/hostside/store.py`) through the transport, one file at a time: a rollback is
rare and a host has tens of files. Only the rendered files are compared, as a plan does; the
maps the host built from them follow them. The host's answer is checked before use: a release
id that is a plain name, absolute normalised paths, each file's content matching its recorded
sha256. A sensitive file's content is read for its digest only: a plan never holds it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from compiler.connectors.transport import Transport
from compiler.push.apply import ReleaseInfo, list_releases
from compiler.push.hostcall import STATE_DIR, HostError
from compiler.push.observe import observe_host
from compiler.push.plan import make_plan
from compiler.types import Activation, FileTree, Plan, RenderedFile

STEP = "rollback"


def choose_release(host: str, releases: Sequence[ReleaseInfo], to: str | None) -> str:
    """The id of the release a rollback installs: `to`, else the one before the current."""
    if to:
        if not any(r.id == to for r in releases):
            raise HostError(host, STEP, f"release {to} is not stored on this host")
        return to
    current = next((r for r in releases if r.current), None)
    if current is None:
        raise HostError(host, STEP, "no current release to roll back from")
    if not current.previous_id:
        raise HostError(host, STEP, f"release {current.id} has no previous release")
    return current.previous_id


def read_release_tree(transport: Transport, release_id: str) -> FileTree:
    """The rendered files of stored release `release_id`, as it installed them."""
    host = transport.host
    if not release_id or "/" in release_id or release_id.startswith("."):
        raise HostError(host, STEP, f"bad release id {release_id!r}")
    base = f"{STATE_DIR}/releases/{release_id}"
    try:
        text = transport.get(f"{base}/release.json")
    except FileNotFoundError:
        raise HostError(host, STEP, f"release {release_id} is not stored on this host") from None
    try:
        record = json.loads(text)
        files = record["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
        tree = {
            path: _read_file(transport, base, path, meta)
            for path, meta in files.items()
            if not meta.get("derived")
        }
    except FileNotFoundError as exc:
        message = f"release {release_id}: a file of its stored tree is missing ({exc.filename})"
        raise HostError(host, STEP, message) from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise HostError(host, STEP, f"release {release_id}: malformed record: {exc}") from exc
    return FileTree(tree)


def _read_file(transport: Transport, base: str, path: str, meta: Mapping[str, Any]) -> RenderedFile:
    if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path:
        raise ValueError(f"{path!r} is not an absolute normalised path")
    content = transport.get(f"{base}/tree{path}")
    if hashlib.sha256(content).hexdigest() != meta["sha256"]:
        raise ValueError(f"{path}: the stored copy does not match its sha256")
    return RenderedFile(
        path=path,
        content=content,
        mode=int(meta["mode"]),
        owner=str(meta["owner"]),
        group=str(meta["group"]),
        role=str(meta.get("role", "")),
        sensitive=bool(meta.get("sensitive", False)),
        shown=meta["shown"] if isinstance(meta.get("shown"), str) else None,
    )


def plan_rollback(
    transport: Transport, host: str, activations: Sequence[Activation], to: str | None
) -> tuple[str, Plan]:
    """The release a rollback to `to` (None: the previous one) installs, and the plan from
    the host's files now to it; `activations` holds one per role of the host."""
    release_id = choose_release(host, list_releases(transport), to)
    tree = read_release_tree(transport, release_id)
    return release_id, make_plan(host, tree, observe_host(transport, tree), tuple(activations))
