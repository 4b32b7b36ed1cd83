"""The read-only commands: `observe` (what is installed and on disk now) and `releases` (what
the store holds). Neither takes the lock: they change nothing.

`observe` answers with sha256/mode/owner/group of every managed or desired path, the content of
files that differ from the desired sha (never of sensitive or very large files; of a sensitive
one, the masked view its release recorded), the activations an interrupted change still
owes, and, when the request names what the roles need, the machine's facts (`machine`).
"""

from __future__ import annotations

import base64
import os
import stat

from .fileops import name_of_gid, name_of_uid, read_json, sha256_file
from .hostroot import Host
from .machine import observe_system
from .store import current_manifest, current_release, read_pending
from .wire import FileMeta, LiveFile, ObserveReply, ObserveRequest, ReleaseEntry, ReleasesReply

MAX_DIFF_BYTES = 1 << 20  # larger files are not returned for diffs


def observe_path(host: Host, host_path: str, recorded: tuple[str, str]) -> LiveFile | None:
    """sha256/mode/owner/group of a live file, or None when absent. Where owners are not
    applied (a directory root), the recorded owner and group stand for the real ones."""
    local = host.path(host_path)
    try:
        st = os.lstat(local)
    except (FileNotFoundError, NotADirectoryError):
        return None
    digest = sha256_file(local) if stat.S_ISREG(st.st_mode) else "not-a-regular-file"
    owner, group = name_of_uid(st.st_uid), name_of_gid(st.st_gid)
    if not host.real_owners:
        owner, group = recorded
    return {
        "sha256": digest,
        "mode": stat.S_IMODE(st.st_mode),
        "owner": owner,
        "group": group,
        "size": st.st_size,
    }


def managed_entry(meta: FileMeta) -> FileMeta:
    """A manifest entry as the reply declares it (records written by older versions may
    lack a field)."""
    entry: FileMeta = {
        "sha256": str(meta["sha256"]),
        "mode": int(meta["mode"]),
        "owner": str(meta["owner"]),
        "group": str(meta["group"]),
        "role": str(meta.get("role", "")),
        "sensitive": bool(meta.get("sensitive", False)),
    }
    if isinstance(meta.get("shown"), str):
        entry["shown"] = meta["shown"]
    return entry


def cmd_observe(host: Host, request: ObserveRequest, warnings: list[str]) -> ObserveReply:
    desired = request["paths"]
    sensitive = set(request["sensitive"])
    cur, manifest = current_manifest(host)
    rendered = {p: managed_entry(m) for p, m in manifest.items() if not m.get("derived")}
    files: dict[str, LiveFile] = {}
    previous: dict[str, str] = {}
    for path in sorted(set(desired) | set(rendered)):
        if path in rendered:
            recorded = (rendered[path]["owner"], rendered[path]["group"])
        else:
            recorded = (desired[path][1], desired[path][2])
        live = observe_path(host, path, recorded)
        if live is None:
            continue
        files[path] = live
        want = desired[path][0] if path in desired else ""
        if want and live["sha256"].startswith(want) and path in rendered:
            rendered[path].pop("shown", None)  # no diff to show: keep the reply small
        secret = path in sensitive or (path in rendered and rendered[path]["sensitive"])
        if (
            not live["sha256"].startswith(want or "-")
            and live["sha256"] != "not-a-regular-file"
            and not secret
            and live["size"] <= MAX_DIFF_BYTES
        ):
            with open(host.path(path), "rb") as f:
                previous[path] = base64.b64encode(f.read()).decode()
    pending = read_pending(host)
    return {
        "ok": True,
        "release_id": cur,
        "managed": rendered,
        "files": files,
        "previous": previous,
        "interrupted": pending["release"] if pending else None,
        "pending": pending["activations"] if pending else [],
        "system": None if request["needs"] is None else observe_system(host, request["needs"]),
    }


def cmd_releases(host: Host, request: object, warnings: list[str]) -> ReleasesReply:
    cur = current_release(host)
    base = host.state_path("releases")
    out: list[ReleaseEntry] = []
    for rid in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        doc = read_json(os.path.join(base, rid, "release.json"))
        if not isinstance(doc, dict):
            continue  # staged or failed attempt, never committed
        installed = doc.get("installed_at")
        out.append(
            {
                "id": rid,
                "tree_digest": str(doc.get("tree_digest", "")),
                "previous": str(doc["previous"]) if doc.get("previous") else None,
                "installed_at": int(installed) if installed else None,
                "files": len(doc.get("files", {})),
                "current": rid == cur,
            }
        )
    return {"ok": True, "current": cur, "releases": out}
