"""Make a plan: the file changes and activations that take a host from its observed state to
the desired tree. Pure: no clock, no I/O; the same inputs give the same plan.

- create: a desired file that is absent on the host;
- update: content differs, or only mode/owner/group (`meta_only`);
- delete: a file the current release manages that is no longer desired and still exists;
- drift: any of those where the host's file is not what the current release installed (edited
  or removed by hand), so the plan shows that the apply overwrites a manual change.
Activations are those of the roles with changes, plus any an interrupted apply still owes.
Host changes (packages to install, users, directories, units: `compiler.push.hostneeds`) are
those the host's needs lack on the machine observed; a local root gets none. Where a role runs
the agent and the host's differs from the controller's, the agent is a host change too and its
role's activation (a restart) is planned.
The content of sensitive files never enters the plan; their masked views do (the desired one,
and the one the current release recorded), for `compiler.push.show` to diff.
"""

from __future__ import annotations

from collections.abc import Iterator

from compiler.push.hostneeds import host_notes, plan_agent_change, plan_host_changes
from compiler.push.hostside.wire import AGENT_ROLE
from compiler.render.masking import masked_view
from compiler.types import (
    Activation,
    ChangeKind,
    FileChange,
    FileTree,
    HostNeeds,
    HostState,
    ManagedFile,
    ObservedFile,
    Plan,
    RenderedFile,
)


def make_plan(
    host: str,
    tree: FileTree,
    state: HostState,
    activations: tuple[Activation, ...],
    needs: HostNeeds = HostNeeds(),  # noqa: B008 (frozen: one shared empty value is safe)
    agent: tuple[str, str] | None = None,
) -> Plan:
    """The plan for `host`; `activations` holds one per role of the host, the plan keeps
    those of the roles with changes; `needs` is what the host's roles need on the machine
    (used where `state` has the machine's facts); `agent` the controller's (id, version)."""
    changes = tuple(_file_changes(tree, state))
    system = state.system
    agent_change = plan_agent_change(needs, system, agent) if system is not None else None
    roles = {c.role for c in changes} | ({AGENT_ROLE} if agent_change else set())
    activations = tuple(a for a in activations if a.role in roles)
    owed = tuple(a for a in state.pending if a.role not in {b.role for b in activations})
    return Plan(
        host=host,
        changes=changes,
        activations=activations + owed,
        tree_digest=tree.digest,
        current_release=state.release_id,
        host_changes=plan_host_changes(needs, system, agent_change) if system is not None else (),
        needs=needs if system is not None else None,
        notes=host_notes(needs, system),
        agent=agent_change,
    )


def _file_changes(tree: FileTree, state: HostState) -> Iterator[FileChange]:
    for path in sorted(set(tree) | set(state.managed)):
        want = tree.get(path)
        if want is not None:
            change = _change_to(want, state.files.get(path), state.managed.get(path), state)
        else:
            change = _deletion(path, state.files.get(path), state.managed[path], state)
        if change is not None:
            yield change


def _change_to(
    want: RenderedFile, have: ObservedFile | None, installed: ManagedFile | None, state: HostState
) -> FileChange | None:
    sensitive = want.sensitive or (installed is not None and installed.sensitive)
    if have is None:
        return FileChange(
            path=want.path,
            kind=ChangeKind.CREATE,
            before=None,
            after=None if sensitive else want.content,
            role=want.role,
            sensitive=sensitive,
            drift=installed is not None,  # managed, but removed by hand
            shown_after=masked_view(want) if sensitive else None,
        )
    same_content = have.sha256 == want.sha256
    same_meta = (have.mode, have.owner, have.group) == (want.mode, want.owner, want.group)
    if same_content and same_meta:
        return None
    if sensitive:
        before, after = None, None
    elif same_content:
        before, after = want.content, want.content
    else:
        before, after = state.previous.get(want.path), want.content
    return FileChange(
        path=want.path,
        kind=ChangeKind.UPDATE,
        before=before,
        after=after,
        role=want.role,
        sensitive=sensitive,
        drift=installed is not None and _differs(have, installed),
        meta_only=same_content,
        meta_before="" if same_meta else _meta(have.mode, have.owner, have.group),
        meta_after="" if same_meta else _meta(want.mode, want.owner, want.group),
        shown_before=installed.shown if sensitive and installed is not None else None,
        shown_after=masked_view(want) if sensitive else None,
    )


def _deletion(
    path: str, have: ObservedFile | None, installed: ManagedFile, state: HostState
) -> FileChange | None:
    if have is None:
        return None  # already gone
    return FileChange(
        path=path,
        kind=ChangeKind.DELETE,
        before=None if installed.sensitive else state.previous.get(path),
        after=None,
        role=installed.role,
        sensitive=installed.sensitive,
        drift=_differs(have, installed),
        shown_before=installed.shown if installed.sensitive else None,
    )


def _meta(mode: int, owner: str, group: str) -> str:
    return f"{mode:04o} {owner}:{group}"


def _differs(have: ObservedFile, installed: ManagedFile) -> bool:
    return (have.sha256, have.mode, have.owner, have.group) != (
        installed.sha256,
        installed.mode,
        installed.owner,
        installed.group,
    )
