"""Show a plan: unified diff, one-line summary, Markdown (for merge requests) or JSON.

A sensitive file's content is never shown, in any format; the plan does not even carry it.
Where its role gave it a mask (`compiler.render.masking`), the diff is that of its masked views
(accounts, quotas and other fields, each hash as `{SCHEME}********`), and a line whose secret
alone changed reads `~ alice@example.com: password changed`; any other sensitive file shows
`(sensitive: content hidden)`. Binary content is described, never dumped.

Host changes (packages to install, groups, users and directories to create or change, units
to enable: `compiler.push.hostneeds`) come before the file changes, as apply does them, with
the notes on what a host leaves alone (a local root's packages, a host without systemd).

Activations are worded as apply carries them out (the roles' apply commands): a reload happens
only where the service runs; a role whose action is `restart` (the agent) is restarted for a
changed systemd unit, and otherwise rereads its config itself; a host whose plan says it runs
no services (a local root) reloads nothing.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from typing import Any, Literal

from compiler.push.hostside.wire import AGENT_ROLE
from compiler.render.masking import MaskedLine, MaskedView, parse_view
from compiler.types import Activation, ChangeKind, FileChange, HostChange, HostChangeKind, Plan

Format = Literal["diff", "summary", "markdown", "json"]
FORMATS: tuple[Format, ...] = ("diff", "summary", "markdown", "json")
SENSITIVE_NOTE = "(sensitive: content hidden)"
NO_SERVICES = "local host: services are not reloaded"
# kind → (what a line of the plan says, the singular and plural of what it counts)
HOST_WORDS: dict[HostChangeKind, tuple[str, str, str]] = {
    HostChangeKind.INSTALL: ("install package", "package to install", "packages to install"),
    HostChangeKind.CREATE_GROUP: ("create group", "group to create", "groups to create"),
    HostChangeKind.CREATE_USER: ("create user", "user to create", "users to create"),
    HostChangeKind.CREATE_DIRECTORY: (
        "create directory",
        "directory to create",
        "directories to create",
    ),
    HostChangeKind.CHANGE_DIRECTORY: (
        "change directory",
        "directory to change",
        "directories to change",
    ),
    HostChangeKind.ENABLE: ("enable unit", "unit to enable", "units to enable"),
    HostChangeKind.AGENT: ("run agent", "agent change", "agent changes"),
}


def format_plan(plan: Plan, fmt: Format = "diff") -> str:
    """`plan` as text in format `fmt` (ends with a newline)."""
    if fmt == "summary":
        return summarize_plan(plan) + "\n"
    if fmt == "json":
        return json.dumps(plan_to_json(plan), indent=2, sort_keys=True) + "\n"
    if fmt == "markdown":
        return _markdown(plan)
    if fmt == "diff":
        return _diff(plan)
    raise ValueError(f"unknown plan format {fmt!r}; use one of {', '.join(FORMATS)}")


def summarize_plan(plan: Plan) -> str:
    """One line: `host: 1 to create, 2 to update (1 drifted), 0 to delete; reload postfix`."""
    if not plan.has_changes:
        return f"{plan.host}: no changes"
    drift = sum(c.drift for c in plan.changes)
    text = f"{plan.host}: {count_changes(plan)}"
    if drift:
        text += f" ({drift} changed by hand on the host)"
    if plan.activations:
        text += "; " + describe_activations(plan)
    if _owed_roles(plan):
        text += " (resuming an interrupted apply)"
    return text


def count_changes(plan: Plan) -> str:
    """`1 to create, 2 to update, 0 to delete`, or `no changes`."""
    if not plan.has_changes:
        return "no changes"
    counts = Counter(c.kind for c in plan.changes)
    text = (
        f"{counts[ChangeKind.CREATE]} to create, {counts[ChangeKind.UPDATE]} to update, "
        f"{counts[ChangeKind.DELETE]} to delete"
    )
    if plan.host_changes:
        text += "; " + count_host_changes(plan)
    return text


def count_host_changes(plan: Plan) -> str:
    """`2 packages to install, 1 user to create`, in the order apply does them."""
    counts = Counter(c.kind for c in plan.host_changes)
    parts = []
    for kind, (_, one, many) in HOST_WORDS.items():
        if counts[kind]:
            parts.append(f"{counts[kind]} {one if counts[kind] == 1 else many}")
    return ", ".join(parts)


def describe_host_change(change: HostChange) -> str:
    """`install package postfix`, `create user vmail (uid 5000, group vmail)`."""
    text = f"{HOST_WORDS[change.kind][0]} {change.subject}"
    return f"{text} ({change.detail})" if change.detail else text


def host_lines(plan: Plan) -> list[str]:
    """The host changes, then the notes, one line each (none for a plan without changes)."""
    if not plan.has_changes:
        return []
    lines = [f"--- {describe_host_change(c)}" for c in plan.host_changes]
    return lines + [f"({note})" for note in plan.notes]


def describe_activations(plan: Plan) -> str:
    """What apply does once the files are in place, as it really does it."""
    if not plan.runs_services:
        return NO_SERVICES
    return "then " + ", ".join(describe_activation(a, plan) for a in plan.activations)


def describe_activation(activation: Activation, plan: Plan) -> str:
    """One role's activation in words (see the module docstring)."""
    service = activation.service
    if activation.summary:
        return activation.summary
    if activation.action == "reload":
        return f"reload {service} if running"
    if activation.action == "restart":
        changes = (c for c in plan.changes if c.role == activation.role)
        if any(c.path.endswith(".service") for c in changes):
            return f"restart {service} (its systemd unit changed)"
        if plan.agent is not None and activation.role == AGENT_ROLE:
            return f"restart {service} (a new agent)"
        return f"{service} rereads its config itself (restarted only if stopped)"
    return f"{service} rereads its files itself"


def describe_change(change: FileChange) -> str:
    """A change's header line: kind, path and what is special about it."""
    notes = [change.role] if change.role else []
    if change.drift:
        notes.append("DRIFT: changed on the host since the last apply")
    if change.meta_before or change.meta_after:
        notes.append(f"{change.meta_before} -> {change.meta_after}")
    if change.sensitive:
        view = parse_view(change.shown_after) or parse_view(change.shown_before)
        notes.append(f"sensitive: {view.secret}s masked" if view else "sensitive: content hidden")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return f"{change.kind.value} {change.path}{suffix}"


def diff_change(change: FileChange) -> str:
    """The unified diff of one change, or a note when content must not or cannot be shown."""
    if change.meta_only:
        return ""
    if change.sensitive:
        return diff_masked(change)
    before = _text(change.before)
    after = _text(change.after)
    if isinstance(before, _Binary) or isinstance(after, _Binary):
        return f"(binary content changed: {_size(change.before)} -> {_size(change.after)})\n"
    if change.kind is ChangeKind.UPDATE and change.before is None:
        before_lines: list[str] = []
        note = "(previous content not available from the host)\n"
    else:
        before_lines = (before or "").splitlines(keepends=True)
        note = ""
    lines = difflib.unified_diff(
        before_lines,
        (after or "").splitlines(keepends=True),
        fromfile="/dev/null" if change.kind is ChangeKind.CREATE else f"a{change.path}",
        tofile="/dev/null" if change.kind is ChangeKind.DELETE else f"b{change.path}",
    )
    out = [
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    ]
    return note + "".join(out)


def diff_masked(change: FileChange) -> str:
    """A sensitive change as the diff of its masked views, then one `~ key: password changed`
    line per record whose secret alone tells the views apart."""
    before, after = parse_view(change.shown_before), parse_view(change.shown_after)
    if before is None and after is None:
        return SENSITIVE_NOTE + "\n"
    note = ""
    if change.kind is ChangeKind.UPDATE and before is None:
        note = "(previous masked view not available from the host)\n"
    elif change.drift and change.kind is not ChangeKind.CREATE:
        note = "(changed on the host by hand: compared with what the last release installed)\n"
    old = before.lines if before else ()
    new = after.lines if after else ()
    lines = difflib.unified_diff(
        [line.text + "\n" for line in old],
        [line.text + "\n" for line in new],
        fromfile="/dev/null" if change.kind is ChangeKind.CREATE else f"a{change.path} (masked)",
        tofile="/dev/null" if change.kind is ChangeKind.DELETE else f"b{change.path} (masked)",
    )
    body = "".join(lines) + "".join(_secret_changes(old, new, (after or before or _NONE).secret))
    if not body:
        body = "(sensitive content changed; its masked view shows no difference)\n"
    return note + body


def _secret_changes(
    old: tuple[MaskedLine, ...], new: tuple[MaskedLine, ...], noun: str
) -> list[str]:
    before = {line.key: line.fingerprint for line in old if line.key}
    return [
        f"~ {line.key}: {noun} changed\n"
        for line in new
        if line.key in before and line.fingerprint != before[line.key]
    ]


_NONE = MaskedView("secret", ())


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return {
        "host": plan.host,
        "current_release": plan.current_release,
        "tree_digest": plan.tree_digest,
        "has_changes": plan.has_changes,
        "changes": [
            {
                "path": c.path,
                "kind": c.kind.value,
                "role": c.role,
                "drift": c.drift,
                "meta_only": c.meta_only,
                "meta_before": c.meta_before,
                "meta_after": c.meta_after,
                "sensitive": c.sensitive,
                "diff": diff_change(c),
            }
            for c in plan.changes
        ],
        "activations": [
            {
                "role": a.role,
                "service": a.service,
                "action": a.action,
                "does": describe_activation(a, plan) if plan.runs_services else NO_SERVICES,
            }
            for a in plan.activations
        ],
        "runs_services": plan.runs_services,
        "host_changes": [
            {
                "kind": c.kind.value,
                "subject": c.subject,
                "detail": c.detail,
                "does": describe_host_change(c),
            }
            for c in plan.host_changes
        ],
        # Whether apply ensures the roles' packages, users, directories and units here.
        "manages_machine": plan.needs is not None,
        "notes": list(plan.notes),
    }


def _diff(plan: Plan) -> str:
    out = [f"=== {summarize_plan(plan)}\n"]
    out.extend(line + "\n" for line in host_lines(plan))
    for change in plan.changes:
        out.append(f"--- {describe_change(change)}\n")
        out.append(diff_change(change))
    return "".join(out)


def _markdown(plan: Plan) -> str:
    out = [f"### `{plan.host}`\n\n{summarize_plan(plan)}\n"]
    lines = host_lines(plan)
    if lines:
        out.append("\n" + "".join(f"- {line.removeprefix('--- ')}\n" for line in lines))
    for change in plan.changes:
        out.append(f"\n#### {describe_change(change)}\n")
        body = diff_change(change)
        if body.count("\n") <= 1 and not body.startswith("---"):  # empty, or one note
            out.append(f"\n{body}" if body else "")
        else:
            fence = "````" if "```" in body else "```"
            out.append(f"\n{fence}diff\n{body}{fence}\n")
    return "".join(out)


def _owed_roles(plan: Plan) -> set[str]:
    agent = {AGENT_ROLE} if plan.agent is not None else set()
    return {a.role for a in plan.activations} - {c.role for c in plan.changes} - agent


class _Binary:
    pass


def _text(content: bytes | None) -> str | _Binary | None:
    if content is None:
        return None
    if b"\0" in content:
        return _Binary()
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return _Binary()


def _size(content: bytes | None) -> str:
    return "absent" if content is None else f"{len(content)} bytes"
