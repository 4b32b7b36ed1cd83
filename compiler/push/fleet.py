"""Run plan and apply on many hosts in parallel, and recap what happened to each.

One job per host on a bounded thread pool (`forks`). A host that fails or cannot be reached
does not stop the others: its error becomes its result (failed / unreachable), never an
exception out of `run_parallel`. Results come back in input order, so output is stable.

One recap for every command that works on hosts (plan, apply, unlock, stats): `recap:`, one
line per host (`mx1  changed  release …`: ok / changed / failed / unreachable, then what it
did or why not), then the counts. `plan --format json` carries the same recap in its one
document, which also holds the errors (a failed or unreachable host, or the whole run's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from compiler.connectors.transport import Transport, TransportError
from compiler.push.agentdist import AgentDistError, controller_agent
from compiler.push.apply import ApplyError, apply_plan
from compiler.push.hostcall import HostError
from compiler.push.observe import observe_host
from compiler.push.plan import make_plan
from compiler.push.show import Format, count_changes, format_plan, plan_to_json
from compiler.types import Plan, Release
from schemas.inventory import HostSpec, TransportKind

if TYPE_CHECKING:
    from compiler.render.targets import Target

DEFAULT_FORKS = 10
OpenTransport = Callable[[str, HostSpec], Transport]


class Outcome(StrEnum):
    OK = "ok"  # nothing to change
    CHANGED = "changed"  # changes planned (plan) or applied (apply)
    FAILED = "failed"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class HostResult:
    host: str
    outcome: Outcome
    plan: Plan | None = None
    release: Release | None = None
    message: str = ""
    warnings: tuple[str, ...] = ()


def run_parallel(
    hosts: Sequence[str], job: Callable[[str], HostResult], *, forks: int = DEFAULT_FORKS
) -> list[HostResult]:
    """`job(host)` for every host, at most `forks` at a time; errors become results."""
    if not hosts:
        return []
    pool = ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts))))
    try:
        return list(pool.map(lambda host: _guarded(host, job), hosts))
    finally:
        # On Ctrl-C the hosts not started are dropped and the caller can say so at once; a
        # job already running ends in its thread (an apply goes on on its host anyway).
        pool.shutdown(wait=False, cancel_futures=True)


def _guarded(host: str, job: Callable[[str], HostResult]) -> HostResult:
    try:
        return job(host)
    except TransportError as exc:
        return HostResult(host, Outcome.UNREACHABLE, message=str(exc))
    except HostError as exc:
        return HostResult(host, Outcome.FAILED, message=f"{exc.step}: {exc.message}")
    except OSError as exc:
        return HostResult(host, Outcome.FAILED, message=str(exc))
    except Exception as exc:  # one host's bug must not abort the other hosts' applies
        return HostResult(host, Outcome.FAILED, message=f"internal error: {exc!r}")


def plan_target(target: Target, open_transport: OpenTransport) -> HostResult:
    """Observe the host and make its plan."""
    transport = open_transport(target.name, target.spec)
    machine = target.spec.transport is not TransportKind.LOCAL  # a local root is no machine
    try:
        state = observe_host(transport, target.tree, target.needs if machine else None)
    finally:
        transport.close()
    try:
        agent = controller_agent() if machine and target.needs.agent else None
    except AgentDistError as exc:
        raise HostError(target.name, "agent", str(exc)) from None
    plan = make_plan(target.name, target.tree, state, target.activations, target.needs, agent)
    plan = replace(plan, runs_services=runs_services(target.spec))
    return HostResult(target.name, Outcome.CHANGED if plan.has_changes else Outcome.OK, plan)


def runs_services(spec: HostSpec) -> bool:
    """Whether apply reloads and verifies services on the host. A local root never does,
    unless MAILCFG_SERVICES=run: the on-host program's rule (`hostside/hostroot.py`), and a
    local root's commands run with this process's environment."""
    local = spec.transport is TransportKind.LOCAL
    return not local or os.environ.get("MAILCFG_SERVICES") == "run"


def apply_target(
    target: Target,
    plan: Plan,
    open_transport: OpenTransport,
    *,
    release_id: str,
    keep_releases: int = 5,
) -> HostResult:
    """Apply a plan made (and shown) before; the host refuses it if its release moved since."""
    if not plan.has_changes:
        return HostResult(target.name, Outcome.OK, plan)
    warnings: list[str] = []
    transport = open_transport(target.name, target.spec)
    try:
        release = apply_plan(
            plan,
            target.tree,
            transport,
            release_id=release_id,
            role_activations=[a for a in target.activations if a.role in target.host_roles],
            keep_releases=keep_releases,
            warn=warnings.append,
        )
    except HostError as exc:
        return HostResult(
            target.name,
            Outcome.FAILED,
            plan,
            message=_describe_failure(exc),
            warnings=tuple(warnings),
        )
    finally:
        transport.close()
    return HostResult(target.name, Outcome.CHANGED, plan, release, warnings=tuple(warnings))


def _describe_failure(exc: HostError) -> str:
    text = f"{exc.step}: {exc.message}"
    if isinstance(exc, ApplyError) and exc.step in ("install", "activate", "verify"):
        where = f"release {exc.rolled_back_to}" if exc.rolled_back_to else "the files found before"
        text += f"\n  rolled back to {where}"
        if exc.rollback_errors:
            text += "; rollback problems: " + "; ".join(exc.rollback_errors)
    return text


def format_plans(results: Sequence[HostResult], fmt: Format) -> str:
    """The plans of `results` in `fmt` (a host without a plan shows in the recap)."""
    if fmt == "json":
        return format_json_report(results)
    return "".join(format_plan(r.plan, fmt) for r in results if r.plan is not None)


def format_plan_report(results: Sequence[HostResult], fmt: Format) -> str:
    """What `mailcfg plan` prints: the plans, then the recap (inside the document as JSON;
    fenced in Markdown)."""
    if fmt == "json":
        return format_json_report(results)
    recap = format_recap(results)
    if fmt == "markdown":
        recap = f"\n```\n{recap}```\n"
    return format_plans(results, fmt) + recap


def format_json_report(results: Sequence[HostResult], errors: Sequence[dict[str, Any]] = ()) -> str:
    """One JSON document: the plans, the errors (each host without a plan, then `errors`:
    the run's own, with `host` null) and the recap."""
    doc = {
        "plans": [plan_to_json(r.plan) for r in results if r.plan is not None],
        "errors": [
            {"host": r.host, "outcome": r.outcome.value, "message": r.message}
            for r in results
            if r.plan is None
        ]
        + list(errors),
        "recap": {
            "hosts": [
                {"host": r.host, "outcome": r.outcome.value, "detail": _detail(r)} for r in results
            ],
            "counts": {o.value: sum(r.outcome is o for r in results) for o in Outcome},
        },
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def format_recap(results: Sequence[HostResult]) -> str:
    """`recap:`, one line per host (aligned: host, outcome, what it did or why not, then its
    warnings and the rest of its message), then the counts."""
    if not results:
        return "recap: no hosts\n"
    width = max(len(r.host) for r in results)
    outcome_width = max(len(r.outcome.value) for r in results)
    lines = ["recap:"]
    for r in results:
        detail = _detail(r)
        head = f"{r.host:<{width}}  {r.outcome.value:<{outcome_width}}  {detail}"
        lines.append(head.rstrip())
        lines.extend(f"{'':<{width}}  warning: {w}" for w in r.warnings)
        lines.extend(f"{'':<{width}}  {m}" for m in r.message.splitlines()[1:])
    counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
    lines.append(", ".join(f"{o.value}={n}" for o, n in counts.items()))
    return "\n".join(lines) + "\n"


def _detail(r: HostResult) -> str:
    if r.release is not None and r.outcome is Outcome.CHANGED:
        return f"release {r.release.id}"
    if r.message:
        return r.message.splitlines()[0]
    return count_changes(r.plan) if r.plan is not None else ""


def recap_exit_code(results: Sequence[HostResult]) -> int:
    """1 when any host failed or was unreachable, else 0."""
    bad = (Outcome.FAILED, Outcome.UNREACHABLE)
    return 1 if any(r.outcome in bad for r in results) else 0
