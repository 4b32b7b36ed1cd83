"""A domain admin's statistics page: the agents' per-account daily counters (as `mailcfg
stats` gathers them from the hosts serving the domain) in the panel's table of every counter
per account and day, and per account a chart over time of sent mail against its daily limit,
login failures and rejects, so that a stolen password stands out at a glance; and the
accounts the agents hold locked now, with why (as `mailcfg-agent locks` says).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Blueprint, render_template
from markupsafe import Markup

from compiler.build import BuildSession
from compiler.load.layers import resolve_policy
from compiler.push.agentcall import AgentCall
from compiler.push.fleet import HostResult, Outcome
from compiler.render.roles import role_defaults
from compiler.tools.stats import StatsRow
from compiler.web.access import administered_domain
from compiler.web.app import login_required
from compiler.web.deploy import hosts_serving
from compiler.web.directory import Snapshot
from schemas.domain import Domain
from schemas.inventory import Role
from schemas.stats import STAT_COUNTERS

stats_pages = Blueprint("stats", __name__, url_prefix="/domain")
Day = dict[str, int]
CHART_SERIES = (("sent", "#2b6cb0"), ("login_failures", "#dd6b20"), ("rejected", "#718096"))


def daily_limits(snapshot: Snapshot, domain: Domain, hosts: Sequence[str]) -> dict[str, int | None]:
    """Each account's sending limit per day: its own, else the lowest of the hosts'."""
    inventory = snapshot.inventory
    defaults = role_defaults(snapshot.session.roles())
    host_limits = [resolve_policy(inventory, h, defaults).limits.per_day for h in hosts]
    server = min((v for v in host_limits if v is not None), default=None)
    limits: dict[str, int | None] = {}
    for account in domain.accounts:
        own = account.limits.per_day if account.limits is not None else None
        limits[domain.address_of(account.name).lower()] = own if own is not None else server
    return limits


def per_account_day(rows: Sequence[StatsRow], domain: str) -> dict[str, dict[str, Day]]:
    """account → day → counters, summed over the hosts (an account sends through any)."""
    table: dict[str, dict[str, Day]] = {}
    for row in rows:
        account = row.account.lower()
        if account.rpartition("@")[2] != domain:
            continue
        day = table.setdefault(account, {}).setdefault(row.day, dict.fromkeys(STAT_COUNTERS, 0))
        for name in STAT_COUNTERS:
            day[name] += row.counters.get(name, 0)
    return table


def gather_locks(
    session: BuildSession, hosts: Sequence[str], domain: str
) -> tuple[list[tuple[str, str, str]], list[HostResult]]:
    """(account, host, why) of each of the domain's accounts an agent holds locked."""
    found: list[tuple[str, str, str]] = []

    def work(call: AgentCall) -> HostResult:
        result = call.transport.run(call.command("locks"))
        if not result.ok:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:]
            return HostResult(call.host, Outcome.FAILED, message=f"locks: {' '.join(last)}")
        for line in result.stdout.splitlines():
            account, _, why = line.partition("\t")
            if account.lower().rpartition("@")[2] == domain:
                found.append((account.lower(), call.host, why))
        return HostResult(call.host, Outcome.OK)

    results = session.on_agents(hosts, work) if hosts else []
    return sorted(found), results


def chart_svg(account: str, days: Mapping[str, Day], limit: int | None) -> str:
    """Grouped bars per day (sent, login failures, rejected) and the daily limit as a line."""
    ordered = sorted(days)
    group_w, bar_w, height, top, left = 3 * 10 + 14, 10, 160, 20, 40
    width = left + max(1, len(ordered)) * group_w + 20
    peak = max([1, limit or 0, *(days[d][s] for d in ordered for s, _ in CHART_SERIES)])
    plot_h = height - top - 30

    def y(value: int) -> float:
        return top + plot_h - plot_h * value / peak

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(account)}">',
        f'<text x="0" y="12" font-size="12" font-weight="bold">{html.escape(account)}</text>',
        f'<text x="0" y="{top + 8}" font-size="10">{peak}</text>',
    ]
    for i, day in enumerate(ordered):
        x = left + i * group_w
        for j, (name, colour) in enumerate(CHART_SERIES):
            value = days[day][name]
            parts.append(
                f'<rect x="{x + j * bar_w}" y="{y(value):.1f}" width="{bar_w - 1}" '
                f'height="{top + plot_h - y(value):.1f}" fill="{colour}">'
                f"<title>{html.escape(day)}: {name} {value}</title></rect>"
            )
        parts.append(f'<text x="{x}" y="{height - 14}" font-size="9">{html.escape(day[5:])}</text>')
    if limit is not None:
        parts.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y(limit):.1f}" y2="{y(limit):.1f}" '
            f'stroke="#c53030" stroke-dasharray="4 3"><title>limit {limit} a day</title></line>'
        )
    parts.append("</svg>")
    return "".join(parts)


@stats_pages.route("/<domain_name>/stats")
@login_required
def domain_stats(domain_name: str) -> Any:
    view = administered_domain(domain_name)
    snapshot, domain, admin_of = view.snapshot, view.domain, view.admin_of
    domain_name = domain_name.lower()
    hosts = [
        h
        for h in hosts_serving(snapshot.session, domain_name)
        if Role.AGENT in snapshot.inventory.hosts[h].roles
    ]
    rows, results = snapshot.session.agent_stats(hosts, None, None) if hosts else ([], [])
    locks, lock_results = gather_locks(snapshot.session, hosts, domain_name)
    table = per_account_day(rows, domain_name)
    limits = daily_limits(snapshot, domain, hosts)
    charts = [
        # Markup: every text chart_svg puts in the SVG is escaped there.
        (account, Markup(chart_svg(account, days, limits.get(account))))
        for account, days in sorted(table.items())
    ]
    return render_template(
        "stats.html",
        domain=domain,
        admin_of=admin_of,
        table=table,
        limits=limits,
        charts=charts,
        counters=STAT_COUNTERS,
        locks=locks,
        failures=[r for r in [*results, *lock_results] if r.outcome is not Outcome.OK],
        series=CHART_SERIES,
    )
