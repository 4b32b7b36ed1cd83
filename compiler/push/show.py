"""Show a plan: unified diff, one-line summary, Markdown (for merge requests) or JSON.

A sensitive file only ever shows `(sensitive content changed)`, in every format; the plan does
not even carry its content. Binary content is described, never dumped.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from typing import Any, Literal

from compiler.types import ChangeKind, FileChange, Plan

Format = Literal["diff", "summary", "markdown", "json"]
FORMATS: tuple[Format, ...] = ("diff", "summary", "markdown", "json")
SENSITIVE_NOTE = "(sensitive content changed)"


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
    counts = Counter(c.kind for c in plan.changes)
    drift = sum(c.drift for c in plan.changes)
    text = (
        f"{plan.host}: {counts[ChangeKind.CREATE]} to create, {counts[ChangeKind.UPDATE]} to "
        f"update, {counts[ChangeKind.DELETE]} to delete"
    )
    if drift:
        text += f" ({drift} changed by hand on the host)"
    if plan.activations:
        text += "; then " + ", ".join(f"{a.action} {a.service}" for a in plan.activations)
    if _owed_roles(plan):
        text += " (resuming an interrupted apply)"
    return text


def describe_change(change: FileChange) -> str:
    """A change's header line: kind, path and what is special about it."""
    notes = [change.role] if change.role else []
    if change.drift:
        notes.append("DRIFT: changed on the host since the last apply")
    if change.meta_before or change.meta_after:
        notes.append(f"{change.meta_before} -> {change.meta_after}")
    if change.sensitive:
        notes.append("sensitive")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return f"{change.kind.value} {change.path}{suffix}"


def diff_change(change: FileChange) -> str:
    """The unified diff of one change, or a note when content must not or cannot be shown."""
    if change.sensitive:
        return SENSITIVE_NOTE + "\n"
    if change.meta_only:
        return ""
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
            {"role": a.role, "service": a.service, "action": a.action} for a in plan.activations
        ],
    }


def _diff(plan: Plan) -> str:
    out = [f"=== {summarize_plan(plan)}\n"]
    for change in plan.changes:
        out.append(f"--- {describe_change(change)}\n")
        out.append(diff_change(change))
    return "".join(out)


def _markdown(plan: Plan) -> str:
    out = [f"### `{plan.host}`\n\n{summarize_plan(plan)}\n"]
    for change in plan.changes:
        out.append(f"\n#### {describe_change(change)}\n")
        body = diff_change(change)
        if change.sensitive or not body.startswith(("---", "(previous")):
            out.append(f"\n{body}" if body else "")
        else:
            fence = "````" if "```" in body else "```"
            out.append(f"\n{fence}diff\n{body}{fence}\n")
    return "".join(out)


def _owed_roles(plan: Plan) -> set[str]:
    return {a.role for a in plan.activations} - {c.role for c in plan.changes}


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
