"""`mailcfg doctor`'s verdict on one DKIM key of one host and domain, by its place in a
rotation (`DkimKey.state`) and what the DNS serves under its selector.

The host's rspamd signs with a key only while the DNS serves its public key and it matches
(`check_pubkey`, roles/rspamd dkim_signing.conf), so what doctor sees is also what decides
the signing: the current key signs once published; the next key (`rotate`) signs besides it
once published, which is when the inventory may make it the selector; a retired key signs
nothing and its record stays `keep_days` after its `retired` day, so mail signed before the
switch still verifies. Only this part of doctor reads the day (passed in: `today`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Literal

from compiler.tools.dnsrecords import DkimKey

Verdict = tuple[Literal["ok", "warn", "fail"], str, str]  # status, message, fix


def dkim_verdict(key: DkimKey, published: Sequence[str], publish: str, today: date) -> Verdict:
    """The check of `key` given the `p=` values the DNS serves under its selector (none: no
    record) and `publish`, the fix that publishes its record."""
    matches = key.public_key in published
    if key.state == "retired":
        return _retired(key, matches, bool(published), publish, today)
    if key.state == "next":
        if matches:
            retire = f"{{selector: {key.current or '<current selector>'}, retired: {today}}}"
            return (
                "ok",
                f"next key {key.selector} published and matching: signing with both; set "
                f"selector: {key.prefix or key.selector}, and add the current one to "
                f"retired_selectors as {retire}",
                "",
            )
        if published:
            return (
                "fail",
                f"next key {key.selector}: the published key is not the host's, so the host "
                "does not sign with it",
                publish,
            )
        return (
            "warn",
            f"next key {key.selector} not published yet: mail is signed with the current key only",
            publish,
        )
    if matches:
        return "ok", "the host's key is published", ""
    found = "the published key is not the host's" if published else "no record"
    return "fail", f"{found}: the host does not sign with this key until it is published", publish


def _retired(key: DkimKey, matches: bool, any_record: bool, publish: str, today: date) -> Verdict:
    name = key.record_name
    drop = f"drop {key.prefix or key.selector} from retired_selectors"
    if key.retired is None:
        return (
            "warn",
            f"retired {key.selector} has no date: when its record may go is unknown",
            f"write it as {{selector: {key.prefix or key.selector}, retired: <the day of the "
            f"switch>}}; its record stays retired_keep_days ({key.keep_days}) after that day",
        )
    if key.retired > today:
        return (
            "fail",
            f"retired {key.selector} on {key.retired}, a date in the future (today is {today})",
            "set retired: to the day of the apply that stopped signing with it",
        )
    until = key.retired + timedelta(days=key.keep_days)
    since = f"retired {key.selector} since {key.retired}"
    if today >= until:
        if any_record:
            return (
                "warn",
                f"{since}: its record may go since {until}",
                f"remove {name} TXT from the DNS and {drop}",
            )
        return "warn", f"{since}: its record is gone, as it may be since {until}", drop
    if matches:
        return (
            "ok",
            f"{since}: keep its record until {until}, then remove it and {drop}",
            "",
        )
    found = "another key is published" if any_record else "its record is gone"
    return (
        "warn",
        f"{since}: {found}, so mail signed before the switch does not verify until {until}",
        publish,
    )
