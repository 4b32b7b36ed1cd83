"""Per-account daily mail statistics gathered from hosts: `gather_stats`, `format_stats`,
`write_html_report`.

Each host's agent prints its rows with `mailcfg-agent stats --format json`; this module runs
that over a `Transport`, validates the answer, and renders a table, JSON, CSV or a
self-contained HTML report (inline SVG charts, no script, no external URL: it opens from disk).
"""

from __future__ import annotations

import csv
import html
import io
import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from compiler.connectors.transport import Transport
from schemas.agent import DEFAULT_AGENT_CONFIG
from schemas.stats import STAT_COUNTERS as COUNTERS


class StatsError(Exception):
    """A host's statistics could not be read; the message names the host and the cause."""


@dataclass(frozen=True, slots=True)
class StatsRow:
    host: str
    day: str
    account: str
    counters: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "day": self.day, "account": self.account, **self.counters}


def parse_agent_stats(host: str, text: str) -> list[StatsRow]:
    """Rows of one host from `mailcfg-agent stats --format json` output."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StatsError(f"{host}: the agent's stats output is not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise StatsError(f"{host}: the agent's stats output is not a list")
    rows: list[StatsRow] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("day"), str):
            raise StatsError(f"{host}: stats entry {i} has no day")
        if not isinstance(item.get("account"), str):
            raise StatsError(f"{host}: stats entry {i} has no account")
        counters = {}
        for name in COUNTERS:
            value = item.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise StatsError(f"{host}: stats entry {i}: {name} is not a count")
            counters[name] = value
        rows.append(StatsRow(host, item["day"], item["account"], counters))
    return rows


def gather_stats(
    transports: Iterable[Transport],
    day: str | None = None,
    account: str | None = None,
    *,
    agent_config: str = DEFAULT_AGENT_CONFIG,
    options: Sequence[str] = (),
    timeout: float = 120.0,
) -> list[StatsRow]:
    """Run the agent's `stats` on each host and collect the rows (host, day, account order);
    `options` go to the agent too (say `--state DSN`, `--no-queue`)."""
    rows: list[StatsRow] = []
    for transport in transports:
        command = ["mailcfg-agent", "stats", "--format", "json", "--config", agent_config]
        command += options
        if day is not None:
            command += ["--day", day]
        if account is not None:
            command += ["--account", account]
        result = transport.run(shlex.join(command), timeout=timeout)
        if not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise StatsError(
                f"{transport.host}: `mailcfg-agent stats` failed (exit {result.exit_code})"
                + (f": {detail[-1]}" if detail else "")
            )
        rows.extend(parse_agent_stats(transport.host, result.stdout))
    rows.sort(key=lambda r: (r.host, r.day, r.account))
    return rows


def format_stats(rows: Sequence[StatsRow], fmt: str = "table") -> str:
    """`table` (aligned columns), `json` (a list of objects) or `csv`."""
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=1) + "\n"
    columns = ["host", "day", "account", *COUNTERS]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(r.as_dict() for r in rows)
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (table, json or csv)")
    if not rows:
        return "no statistics\n"
    header = ["host", "day", "account", *(_SHORT[c] for c in COUNTERS)]
    table = [header] + [
        [r.host, r.day, r.account, *(str(r.counters[c]) for c in COUNTERS)] for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = []
    for line in table:
        cells = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


# The original panel's column names, so admins recognise them.
_SHORT = {
    "pop3_logins": "pop3",
    "imap_logins": "imap",
    "sent": "sent",
    "bounced": "bounc",
    "deferred": "defer",
    "queued": "queue",
    "rejected": "rejec",
    "blacklist_blocked": "blist",
    "spf_blocked": "nospf",
    "lost_connections": "lostc",
    "login_failures": "authf",
    "received": "recv",
}

_COLOURS = {"sent": "#2b6cb0", "received": "#2f855a", "rejected": "#c53030"}


def _bar_chart(
    title: str, bars: Sequence[tuple[str, dict[str, int]]], series: Sequence[str]
) -> str:
    """Grouped horizontal bars as inline SVG: one group per label, one bar per series."""
    bar_h, gap, label_w, width = 12, 10, 230, 720
    peak = max([1] + [v for _, values in bars for v in values.values()])
    height = 30 + len(bars) * (len(series) * bar_h + gap) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>',
    ]
    y = 30
    for label, values in bars:
        parts.append(f'<text x="0" y="{y + bar_h}" font-size="12">{html.escape(label)}</text>')
        for name in series:
            v = values.get(name, 0)
            w = round((width - label_w - 60) * v / peak)
            colour = _COLOURS.get(name, "#718096")
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h - 2}" fill="{colour}">'
                f"<title>{html.escape(label)}: {name} {v}</title></rect>"
                f'<text x="{label_w + w + 4}" y="{y + bar_h - 3}" font-size="10">{v}</text>'
            )
            y += bar_h
        y += gap
    legend_x = label_w
    for name in series:
        parts.append(
            f'<rect x="{legend_x}" y="{y}" width="10" height="10" '
            f'fill="{_COLOURS.get(name, "#718096")}"/>'
            f'<text x="{legend_x + 14}" y="{y + 9}" font-size="11">{name}</text>'
        )
        legend_x += 90
    parts.append("</svg>")
    return "".join(parts)


def render_html_report(rows: Sequence[StatsRow], title: str = "Mail statistics") -> str:
    """A self-contained HTML page: per day, sent/received/rejected per account and the top
    senders; then the full table."""
    days = sorted({r.day for r in rows}, reverse=True)
    sections = []
    series = ("sent", "received", "rejected")
    for day in days:
        per_account: dict[str, dict[str, int]] = {}
        for r in rows:
            if r.day == day:
                acc = per_account.setdefault(r.account, dict.fromkeys(COUNTERS, 0))
                for c in COUNTERS:
                    acc[c] += r.counters[c]
        ordered = sorted(
            per_account.items(), key=lambda kv: (-sum(kv[1][s] for s in series), kv[0])
        )
        top = sorted(per_account.items(), key=lambda kv: (-kv[1]["sent"], kv[0]))[:10]
        top = [kv for kv in top if kv[1]["sent"] > 0]
        sections.append(
            f"<section><h2>{html.escape(day)}</h2>"
            + _bar_chart(f"{day}: sent / received / rejected per account", ordered[:40], series)
            + (_bar_chart(f"{day}: top senders", top, ("sent",)) if top else "")
            + "</section>"
        )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in ("host", "day", "account", *COUNTERS))
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(v)}</td>" for v in (r.host, r.day, r.account))
        + "".join(f'<td class="n">{r.counters[c]}</td>' for c in COUNTERS)
        + "</tr>"
        for r in rows
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#1a202c}"
        "table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #cbd5e0;padding:2px 6px}td.n{text-align:right}"
        "section{margin-bottom:2em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + ("".join(sections) if rows else "<p>No statistics.</p>")
        + f"<h2>All rows</h2><table><tr>{header}</tr>{body}</table></body></html>\n"
    )


def write_html_report(rows: Sequence[StatsRow], path: Path) -> None:
    Path(path).write_text(render_html_report(rows), encoding="utf-8")
