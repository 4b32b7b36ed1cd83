"""Finish what an interrupted change left behind: its half-installed files, its owed reloads,
its uploaded bundle; and the stable copy of this program that the boot hook runs.

`recover` runs before Postfix and Dovecot read their files at boot (the agent's unit runs
`/var/lib/mailcfg/onhost.pyz recover` as its `ExecStartPre`, and the agent starts before them),
and at the start of every apply and rollback under the lock, so the files the services load are
always exactly one release's.

Which way: BACK to the last committed release, unless the change had already written `current`.
A change writes `current` only after its files were installed, reloaded and verified: that
write is its point of no return, and recovery after it only finishes the commit (FORWARD).
Before it, the new release was validated but never verified (a crash mid-install, mid-reload
or mid-verify), and its controller never heard it succeed, so the one release known to have
served mail, the committed one, is put back (`install.restore`, the path a failed apply takes).

The owed reloads: those of roles whose action is `reload` run (each acts only on a running
service, so at boot they do nothing and the services start on the restored files); a `restart`
(the agent's own unit, whose start may be what runs this) is left owed in `pending.json`, with
`release` and `previous` both the restored release, for the next change to run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Collection
from typing import Literal

from .agentinstall import point_agent
from .fileops import write_atomic
from .hostlock import HostLock, LockBusy
from .hostroot import Host, StepFailed
from .install import restore
from .runner import run_commands
from .stage import list_tree
from .store import (
    KEEP_EVERY_RELEASE,
    Manifest,
    PendingRecord,
    clear_pending,
    current_release,
    load_release,
    mark_current,
    read_pending,
    write_pending,
)
from .wire import ActivationDoc, RecoverReply, RecoverRequest

Outcome = Literal["nothing", "rolled-back", "rolled-forward", "busy"]
# A file in incoming/ younger than this may be an upload whose program has not started yet.
INCOMING_GRACE = 60.0
PROGRAM_COPY = "onhost.pyz"


def clean_incoming(host: Host, keep: str | None) -> None:
    """Remove what earlier calls left in `incoming/` (a killed apply's bundle holds password
    hashes), except `keep` and files younger than `INCOMING_GRACE`; keep the directory 0700."""
    incoming = host.state_path("incoming")
    if not os.path.isdir(incoming):
        return
    os.chmod(incoming, 0o700)
    old = time.time() - INCOMING_GRACE
    for entry in os.scandir(incoming):
        if entry.path == keep or entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.stat(follow_symlinks=False).st_mtime < old:
                os.unlink(entry.path)


def refresh_program_copy(host: Host) -> None:
    """Keep `/var/lib/mailcfg/onhost.pyz` a copy of this program (the boot hook's stable path;
    the hash-named file changes with every version)."""
    running = os.path.abspath(sys.argv[0])
    if not running.endswith(".pyz") or not os.path.isfile(running):
        return
    with open(running, "rb") as f:
        program = f.read()
    copy = host.state_path(PROGRAM_COPY)
    with contextlib.suppress(FileNotFoundError), open(copy, "rb") as f:
        if hashlib.sha256(f.read()).digest() == hashlib.sha256(program).digest():
            return
    write_atomic(copy, program, 0o600)


def recover_interrupted(host: Host, warnings: list[str], run_reloads: bool) -> Outcome:
    """Put the live files back to one release after an interrupted change (see the module's
    docstring for which); with `run_reloads`, run the owed reloads too. Under the lock."""
    pending = read_pending(host)
    if not pending:
        return "nothing"
    current = current_release(host)
    if current is not None and pending["release"] == current != pending["previous"]:
        # Past the point of no return: `current` is written after verify; finish the commit.
        manifest = load_release(host, current)["files"]
        protect = {pending["previous"]} if pending["previous"] else set()
        mark_current(host, current, manifest, KEEP_EVERY_RELEASE, protect)
        return "rolled-forward"
    outcome: Outcome = "nothing"
    if pending["release"] != (current or ""):
        restore_committed(host, pending, current)
        outcome = "rolled-back"
    owed = pending["activations"]
    if run_reloads:
        owed = run_owed_reloads(host, owed, warnings)
    if owed:
        _, manifest = (current, load_release(host, current)["files"]) if current else (None, {})
        write_pending(host, current or "", current, owed, manifest)
    else:
        clear_pending(host)
    return outcome


def restore_committed(host: Host, pending: PendingRecord, current: str | None) -> None:
    """The committed release's files over what the interrupted change installed; the
    release directory it was making removed."""
    old_manifest: Manifest = load_release(host, current)["files"] if current else {}
    touched: Collection[str]
    if "files" in pending:
        touched = pending["files"]
    else:  # a record of an older version: the staged tree names the paths
        touched = list_tree(os.path.join(host.release_dir(pending["release"]), "tree"))
    errors = restore(host, current, old_manifest, touched)
    with contextlib.suppress(OSError, StepFailed):
        # Never fails the recovery: the agent role's next activation compares what runs.
        point_agent(host, load_release(host, current).get("agent") if current else None)
    if errors:
        raise StepFailed("recover", "could not put back: " + "; ".join(errors))
    made = host.release_dir(pending["release"])
    if not os.path.isfile(os.path.join(made, "release.json")):
        shutil.rmtree(made, ignore_errors=True)


def run_owed_reloads(
    host: Host, owed: list[ActivationDoc], warnings: list[str]
) -> list[ActivationDoc]:
    """Run the owed activations whose action is a reload; those not run (a restart, or a
    reload that failed) stay owed."""
    left: list[ActivationDoc] = []
    for activation in owed:
        if activation["action"] != "reload" or not host.run_services:
            left.append(activation)
            continue
        try:
            run_commands(host, "recover", activation["apply"], None, warnings)
        except StepFailed as exc:
            warnings.append(f"{activation['role']}: reload owed by the interrupted change: {exc}")
            left.append(activation)
    return left


def cmd_recover(host: Host, request: RecoverRequest, warnings: list[str]) -> RecoverReply:
    """Recover at boot or agent start. A held lock means a change is running: it finishes or
    rolls back itself, so there is nothing to do (and nothing to wait for)."""
    try:
        with HostLock(host, warnings, "recover", wait=0):
            clean_incoming(host, keep=None)
            outcome = recover_interrupted(host, warnings, run_reloads=True)
    except LockBusy as busy:
        warnings.append(f"{busy.message}: it finishes or rolls back its change itself")
        outcome = "busy"
    pending = read_pending(host)
    owed = sorted(a["role"] for a in pending["activations"]) if pending else []
    return {
        "ok": True,
        "outcome": outcome,
        "release_id": current_release(host),
        "owed": owed,
        "warnings": warnings,
    }
