"""The release transaction: one change of the host's live files from the current release to
another, under the host lock, as named steps sharing one `Transaction`.

    apply:     unpack → provision → agent → stage → build → validate → record pending →
               install → activate → verify → commit
    rollback:                    choose → record pending → install → activate → verify → commit

Provision (`provision`: packages, groups, users, directories, units) comes before the files are
staged, since staging gives them owners that a package or a user step makes and validation
runs the packages' tools; what it did is not undone by a failure or a rollback. The agent
step installs the release's agent from the bundle's wheels when the host lacks it
(`agentinstall`); install points `current` at it and every restore back at the old one's. A failure
before install leaves the live files untouched (a release directory the apply made is
removed). A failure at install, activate or verify, in an apply or a rollback alike, restores
the release the host was on (`install.restore`) and re-runs the reloads; the reply names the
failed step and what was put back. A crash between record pending and commit leaves
`pending.json`: `recover` (at boot, and first thing in the next change, under the lock) puts
the files back to one release and the next change runs the reloads still owed, so a reload is
never lost. Each change also first removes what killed calls left in `incoming/` and refreshes
the program's stable copy (`recover`). Why one process for the whole change: see `hostlock`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import BinaryIO

from .agentinstall import install_agent, point_agent, prune_agents
from .fileops import sync_tree, write_json
from .hostlock import HostLock, hold_tools_lock
from .hostroot import Host, StepFailed
from .install import install_tree, restore
from .provision import provision
from .recover import clean_incoming, recover_interrupted, refresh_program_copy
from .runner import merge_activations, run_commands
from .stage import build_release, stage_release, unpack_bundle
from .store import (
    KEEP_EVERY_RELEASE,
    Manifest,
    ReleaseRecord,
    clear_pending,
    current_manifest,
    load_release,
    mark_current,
    read_pending,
    stored_agents,
    write_pending,
)
from .wire import (
    AGENT_ROLE,
    ActivationDoc,
    ApplyRequest,
    BundleDoc,
    ChangeReply,
    FailureReply,
    RollbackRequest,
    failure_reply,
)


class Transaction:
    """A change from the current release (`from_id`, `from_files`) to `to_id`: the files it
    installs, the activations it owes and the release directory it made (an apply's, removed
    if the change fails; a rollback's target is a stored release and stays)."""

    def __init__(self, host: Host, warnings: list[str]) -> None:
        self.host = host
        self.warnings = warnings
        self.from_id, self.from_files = current_manifest(host)
        self.to_id = ""
        self.files: Manifest = {}
        self.activations: list[ActivationDoc] = []
        self.made_dir: str | None = None
        self.services_checked = False
        self.from_agent = load_release(host, self.from_id).get("agent") if self.from_id else None
        self.to_agent: str | None = None
        self.wheel_dir = host.state_path("staging", f"agent-{os.getpid()}")

    @property
    def stage_dir(self) -> str:
        return os.path.join(self.host.release_dir(self.to_id), "tree")

    # --- an apply's own steps -------------------------------------------------------------------

    def unpack(self, bundle: BinaryIO) -> BundleDoc:
        """Unpack the bundle into a new release directory and check the host is still at the
        release the plan was made against."""
        host = self.host
        staging = host.state_path("staging")
        os.makedirs(staging, mode=0o700, exist_ok=True)
        # Traversable, not listable: the agent's own state directory (its unit's
        # StateDirectory=mailcfg/agent) lives below. What mailcfg keeps here is 0600, or in a
        # 0700 directory (releases and originals hold sensitive copies).
        os.chmod(host.state, 0o711)
        for private in ("releases", "originals"):
            os.makedirs(host.state_path(private), mode=0o700, exist_ok=True)
            os.chmod(host.state_path(private), 0o700)
        unpacked = os.path.join(staging, f"tree-{os.getpid()}")
        shutil.rmtree(unpacked, ignore_errors=True)
        shutil.rmtree(self.wheel_dir, ignore_errors=True)
        try:
            doc = unpack_bundle(host, bundle, unpacked, self.wheel_dir)
            self.check_current(doc)
        except BaseException:
            shutil.rmtree(unpacked, ignore_errors=True)
            shutil.rmtree(self.wheel_dir, ignore_errors=True)
            raise
        self.to_id = doc["id"]
        self.made_dir = host.release_dir(self.to_id)
        shutil.rmtree(self.made_dir, ignore_errors=True)
        os.makedirs(self.made_dir, mode=0o700)
        os.replace(unpacked, self.stage_dir)
        self.files = dict(doc["files"])
        self.activations = list(doc["activations"])
        self.to_agent = doc["agent"]["id"] if doc["agent"] else self.from_agent
        return doc

    def provision(self, doc: BundleDoc) -> None:
        """The packages, groups, users, directories and units the roles need (each its own
        step); nothing when the bundle names none."""
        if doc["needs"] is not None:
            provision(self.host, doc["needs"], self.warnings)

    def install_agent(self, doc: BundleDoc) -> None:
        """The release's agent in its own venv, from the bundle's wheels, unless installed."""
        try:
            if doc["agent"] is not None:
                install_agent(self.host, doc["agent"], self.wheel_dir)
        finally:
            shutil.rmtree(self.wheel_dir, ignore_errors=True)

    def stage(self, doc: BundleDoc) -> None:
        """Verify each unpacked file and give it its metadata (owners the provision made)."""
        stage_release(self.host, doc, self.stage_dir)

    def check_current(self, doc: BundleDoc) -> None:
        if self.from_id != doc["expect_current"]:
            raise StepFailed(
                "check",
                f"host is at release {self.from_id} but the plan was made against "
                f"{doc['expect_current']}: plan again",
            )
        if os.path.isfile(os.path.join(self.host.release_dir(doc["id"]), "release.json")):
            raise StepFailed("check", f"release {doc['id']} already exists on this host")

    def build(self, doc: BundleDoc) -> None:
        """Derived maps in staging; those of roles not rebuilt carried over."""
        self.files = build_release(
            self.host, doc, self.stage_dir, self.from_id, self.from_files, self.warnings
        )

    def validate(self) -> None:
        """The host's own tools on the staged tree; then the tree is made durable (a later
        rollback reads it)."""
        with hold_tools_lock(self.host):
            for activation in self.activations:
                run_commands(
                    self.host, "validate", activation["validate"], self.stage_dir, self.warnings
                )
        sync_tree(self.stage_dir)

    def discard(self) -> None:
        """Remove the release directory this transaction made (never a stored release)."""
        if self.made_dir is not None:
            shutil.rmtree(self.made_dir, ignore_errors=True)

    # --- a rollback's own step ------------------------------------------------------------------

    def choose(self, target: str | None, offered: list[ActivationDoc]) -> None:
        """Stored release `target` (None: the one before the current), with the activations
        of the roles whose files differ between the two: the target's own, else `offered`."""
        if not target:
            if self.from_id is None:
                raise StepFailed("rollback", "no current release to roll back from")
            target = load_release(self.host, self.from_id).get("previous")
            if not target:
                raise StepFailed("rollback", f"release {self.from_id} has no previous release")
        self.to_id = target
        record = load_release(self.host, target)
        self.files = record["files"]
        self.to_agent = record.get("agent") or self.from_agent
        old, new = self.from_files, self.files
        roles = {
            meta.get("role")
            for path, meta in [*new.items(), *old.items()]
            if (path not in new or path not in old)
            or (new[path]["sha256"], new[path]["mode"]) != (old[path]["sha256"], old[path]["mode"])
        }
        if self.to_agent != self.from_agent:
            roles.add(AGENT_ROLE)  # its unit runs through `current`: a restart
        # The target release's own commands where it recorded them (a verify must probe the
        # ports the restored files name); the offered ones, rendered from the inventory the
        # rollback is made from, for a role it lacks and for records of older versions.
        chosen = {a["role"]: a for a in offered}
        chosen.update((a["role"], a) for a in record.get("role_activations", []))
        self.activations = [a for role, a in chosen.items() if role in roles]

    # --- the steps every change shares ----------------------------------------------------------

    def record_pending(self) -> None:
        """What this change owes, before any live file changes; with what an interrupted one
        still owed."""
        pending = read_pending(self.host)
        owed = pending["activations"] if pending else []
        self.activations = merge_activations(self.activations, owed)
        write_pending(self.host, self.to_id, self.from_id, self.activations, self.files)

    def install(self) -> None:
        """The files in place, the previous originals kept (a failure part-way is restored)."""
        install_tree(self.host, self.to_id, self.files, self.from_files)
        point_agent(self.host, self.to_agent)

    def activate(self) -> None:
        """Reload (or restart) the services of the changed roles."""
        if self.run_services():
            for activation in self.activations:
                run_commands(self.host, "activate", activation["apply"], None, self.warnings)

    def verify(self) -> None:
        """Each changed role's service answers."""
        if self.run_services():
            for activation in self.activations:
                run_commands(self.host, "verify", activation["verify"], None, self.warnings)

    def commit(self, record: ReleaseRecord | None, keep: int) -> None:
        """Write the new release's record (an apply's), make it current, prune."""
        if record is not None:
            write_json(os.path.join(self.host.release_dir(self.to_id), "release.json"), record)
        protect = {self.from_id} if self.from_id else set()
        mark_current(self.host, self.to_id, self.files, keep, protect)
        prune_agents(self.host, stored_agents(self.host))

    def restore(self) -> list[str]:
        """Put back the release the host was on and reload; the problems met."""
        errors = restore(self.host, self.from_id, self.from_files, self.files)
        try:
            point_agent(self.host, self.from_agent)
        except (OSError, StepFailed) as exc:
            errors.append(f"agent: {exc}")
        try:
            self.activate()
        except StepFailed as again:
            errors.append(f"reload after rollback: {again.message}")
        if not errors:
            clear_pending(self.host)
        self.discard()
        return errors

    def change_live(self) -> FailureReply | None:
        """record pending → install → activate → verify; a failure restores (its reply)."""
        self.record_pending()
        step = "install"
        try:
            self.install()
            step = "activate"
            self.activate()
            step = "verify"
            self.verify()
        except (OSError, StepFailed) as exc:
            failed = exc if isinstance(exc, StepFailed) else StepFailed(step, str(exc))
            errors = self.restore()
            return failure_reply(failed.step, failed.message, self.warnings, self.from_id, errors)
        return None

    def run_services(self) -> bool:
        """Whether reload/verify commands run here (warned once when they do not)."""
        if self.host.run_services or not self.activations:
            return True
        if not self.services_checked:
            names = ", ".join(sorted({a["service"] or "?" for a in self.activations}))
            self.warnings.append(
                f"reload/verify of {names} skipped: a local root runs no services "
                "(MAILCFG_SERVICES=run forces them)"
            )
            self.services_checked = True
        return False

    def done(self) -> ChangeReply:
        reply: ChangeReply = {
            "ok": True,
            "release_id": self.to_id,
            "previous": self.from_id,
            "warnings": self.warnings,
        }
        return reply


# --- the commands -------------------------------------------------------------------------------


def cmd_apply(host: Host, request: ApplyRequest, warnings: list[str]) -> ChangeReply | FailureReply:
    """Install the uploaded bundle as a new release (the whole transaction, one process). The
    bundle is opened before waiting for the lock (a cleanup by the holder cannot take it away)
    and removed however the call ends."""
    path = host.path(request["bundle"])
    try:
        with open(path, "rb") as bundle, HostLock(host, warnings, "apply"):
            prepare_change(host, warnings, keep=path)
            return apply_bundle(Transaction(host, warnings), bundle)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def prepare_change(host: Host, warnings: list[str], keep: str | None) -> None:
    """Under the lock, before a change: what killed calls left is cleaned up and an
    interrupted change put back to one release (its reloads stay owed, run by this change)."""
    clean_incoming(host, keep)
    recover_interrupted(host, warnings, run_reloads=False)
    refresh_program_copy(host)


def apply_bundle(tx: Transaction, bundle: BinaryIO) -> ChangeReply | FailureReply:
    try:
        doc = tx.unpack(bundle)
        tx.provision(doc)
        tx.install_agent(doc)
        tx.stage(doc)
        tx.build(doc)
        tx.validate()
    except BaseException:
        tx.discard()  # live files untouched: nothing to undo
        raise
    failure = tx.change_live()
    if failure is not None:
        return failure
    record: ReleaseRecord = {
        "id": tx.to_id,
        "tree_digest": doc["tree_digest"],
        "keep_releases": doc["keep_releases"],
        "files": tx.files,
        "activations": tx.activations,
        "previous": tx.from_id,
        "installed_at": int(time.time()),
        "agent": tx.to_agent,
        "role_activations": doc["role_activations"],
    }
    tx.commit(record, doc["keep_releases"])
    return tx.done()


def cmd_rollback(
    host: Host, request: RollbackRequest, warnings: list[str]
) -> ChangeReply | FailureReply:
    """Reinstall a stored release through the same install/activate/restore path."""
    with HostLock(host, warnings, "rollback"):
        prepare_change(host, warnings, keep=None)
        tx = Transaction(host, warnings)
        tx.choose(request["to"], request["activations"])
        failure = tx.change_live()
        if failure is not None:
            return failure
        tx.commit(None, KEEP_EVERY_RELEASE)
        return tx.done()
