"""Run plan and apply on many hosts in parallel, and recap what happened to each.

One job per host on a bounded thread pool (`forks`). A host that fails or cannot be reached
does not stop the others: its error becomes its result (failed / unreachable), never an
exception out of `run_parallel`. Results come back in input order, so output is stable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from compiler.connectors.transport import Transport, TransportError
from compiler.push.apply import ApplyError, apply_plan
from compiler.push.hostcall import HostError
from compiler.push.observe import observe_host
from compiler.push.plan import make_plan
from compiler.push.show import Format, format_plan, plan_to_json
from compiler.types import Plan, Release
from schemas.inventory import HostSpec

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
    try:
        state = observe_host(transport, target.tree)
    finally:
        transport.close()
    plan = make_plan(target.name, target.tree, state, target.activations)
    return HostResult(target.name, Outcome.CHANGED if plan.has_changes else Outcome.OK, plan)


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
    """The plans of `results` in `fmt`; as JSON, one document with the hosts without a plan
    as errors."""
    if fmt == "json":
        doc = {
            "plans": [plan_to_json(r.plan) for r in results if r.plan is not None],
            "errors": [
                {"host": r.host, "outcome": r.outcome.value, "message": r.message}
                for r in results
                if r.plan is None
            ],
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return "".join(format_plan(r.plan, fmt) for r in results if r.plan is not None)


def format_recap(results: Sequence[HostResult]) -> str:
    """One line per host, aligned, then each failure's message."""
    if not results:
        return "no hosts\n"
    width = max(len(r.host) for r in results)
    lines = []
    for r in results:
        detail = ""
        if r.release is not None and r.outcome is Outcome.CHANGED:
            detail = f"  release {r.release.id}"
        elif r.message:
            detail = "  " + r.message.splitlines()[0]
        lines.append(f"{r.host:<{width}}  {r.outcome.value}{detail}")
        lines.extend(f"{'':<{width}}  warning: {w}" for w in r.warnings)
        lines.extend(f"{'':<{width}}  {m}" for m in r.message.splitlines()[1:])
    counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
    lines.append(", ".join(f"{o.value}={n}" for o, n in counts.items()))
    return "\n".join(lines) + "\n"


def recap_exit_code(results: Sequence[HostResult]) -> int:
    """1 when any host failed or was unreachable, else 0."""
    bad = (Outcome.FAILED, Outcome.UNREACHABLE)
    return 1 if any(r.outcome in bad for r in results) else 0
