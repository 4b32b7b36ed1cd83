"""Mail filtering policy: DKIM signing, inbound DMARC, spam actions, anti-virus, SRS, and the
loopback ports of the daemons that do them (rspamd, postsrsd).

Any of `dkim`, `dmarc`, `spam_actions` or `antivirus` gives a host Debian's rspamd as Postfix's
milter (the `rspamd` role); `antivirus` adds ClamAV (the `clamav` role), `srs` Debian's
postsrsd (the `srs` role). Every value lands in an rspamd UCL file, main.cf or a shell command
run as root: selectors are DNS labels, scores bounded numbers, ports integers.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from itertools import pairwise
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator

from schemas.common import Frozen, Port, json_string, show_value

SELECTOR_PREFIX_MAX = 30
_SELECTOR_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def check_selector_prefix(value: str) -> str:
    """A DKIM selector's first part: lower-case letters, digits and inner hyphens (one DNS
    label; the host's name is appended to it)."""
    if len(value) > SELECTOR_PREFIX_MAX or not _SELECTOR_RE.fullmatch(value):
        raise ValueError(
            f"{show_value(value)} is not a DKIM selector: lower-case letters, digits and '-' "
            f"(not first or last), at most {SELECTOR_PREFIX_MAX} characters, like mc2026a"
        )
    return value


SelectorPrefix = Annotated[
    str,
    AfterValidator(check_selector_prefix),
    json_string("^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", SELECTOR_PREFIX_MAX),
]


class DkimAlgorithm(StrEnum):
    RSA = "rsa"  # 2048 bits: what every receiver verifies
    ED25519 = "ed25519"  # RFC 8463: short keys, not verified by every receiver yet


RETIRED_KEEP_DAYS_MAX = 90
_ISO_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_iso_date(value: object) -> object:
    """A day written YYYY-MM-DD (a date object passes): never a number, which pydantic would
    read as a Unix time."""
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _ISO_DATE_RE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{show_value(str(value))} is not a date written YYYY-MM-DD, like 2026-12-07")


IsoDate = Annotated[
    date,
    BeforeValidator(check_iso_date),
    WithJsonSchema({"type": "string", "format": "date"}),
]


class DkimRotation(Frozen):
    """A rotation under way: the host makes the key `<selector>-<host>` at the next apply and
    `mailcfg dns` prints its record; rspamd signs with it, besides the current key, as soon as
    the DNS serves that record (it checks before each signature). Once `mailcfg doctor` says
    it is published, make it `dkim.selector` and retire the old one."""

    selector: SelectorPrefix = Field(description="The next key's selector (its first part).")


class RetiredSelector(Frozen):
    """A key no longer signed with whose record stays published for `retired_keep_days` after
    `retired` (mail signed before the switch is still verified by receivers)."""

    selector: SelectorPrefix
    retired: IsoDate | None = Field(
        default=None,
        description="The day the host stopped signing with it (the apply that made the next "
        "key `selector`); `mailcfg doctor` says when its record may go.",
    )


def _retired_entry(value: object) -> object:
    """A bare selector (the older form) is a retired key without a date."""
    return {"selector": value} if isinstance(value, str) else value


RetiredEntry = Annotated[RetiredSelector, BeforeValidator(_retired_entry)]


class Dkim(Frozen):
    """Sign the mail the host sends, for every domain it serves (alias domains too), aligned
    with the header From. Each host has its own key, generated on the host at the first apply
    (never in git or a plan), under the selector `<selector>-<host>`; `mailcfg dns` prints
    its record once the host has it. rspamd signs with a key only while the DNS serves its
    public key and it matches the host's."""

    selector: SelectorPrefix = Field(
        default="mc2026a",
        description="The selector's first part; the host signs as <selector>-<host name>. "
        "A new value makes a new key (rotate with `rotate` instead).",
    )
    algorithm: DkimAlgorithm = Field(
        default=DkimAlgorithm.RSA, description="rsa (2048 bits, the default) or ed25519."
    )
    rotate: DkimRotation | None = Field(
        default=None,
        description="Rotation, step 1: make and publish the next key; the host signs with it "
        "too once the DNS serves it. Step 2 (once `mailcfg doctor` finds it): make it "
        "`selector` and move the old one to `retired_selectors` with today's date.",
    )
    retired_selectors: list[RetiredEntry] = Field(
        default_factory=list,
        max_length=8,
        description="Rotation, step 3: keys no longer signed with whose records `mailcfg dns` "
        "still prints, each with the day it was retired ({selector: mc2026a, retired: "
        "2026-12-07}); `mailcfg doctor` says when the record may go.",
    )
    retired_keep_days: int = Field(
        default=7,
        ge=1,
        le=RETIRED_KEEP_DAYS_MAX,
        description="How long a retired key's record stays published after its `retired` day.",
    )

    @model_validator(mode="before")
    @classmethod
    def accept_next_selector(cls, data: object) -> object:
        """`next_selector: X`, the older spelling, is `rotate: {selector: X}`."""
        if isinstance(data, dict) and "next_selector" in data:
            data = dict(data)
            older = data.pop("next_selector")
            if older is not None:
                if "rotate" in data:
                    raise ValueError("give rotate or next_selector (its older name), not both")
                data["rotate"] = {"selector": older}
        return data

    @property
    def next_selector(self) -> str | None:
        return self.rotate.selector if self.rotate else None

    @model_validator(mode="after")
    def check_selectors(self) -> Dkim:
        named = [self.selector, *([self.next_selector] if self.next_selector else [])]
        named += [r.selector for r in self.retired_selectors]
        if len(set(named)) != len(named):
            raise ValueError(
                f"a selector is named twice among selector, rotate and retired_selectors: {named}"
            )
        return self


class InboundDmarc(Frozen):
    """rspamd checks SPF, DKIM, DMARC and ARC of inbound mail and adds Authentication-Results."""

    enforce: bool = Field(
        default=True,
        description="Apply the sender domain's published DMARC policy: p=reject is refused at "
        "DATA, p=quarantine scores as spam; false: only the Authentication-Results header.",
    )


SPAM_SCORE_MAX = 1000.0
Score = Annotated[float, Field(gt=0, le=SPAM_SCORE_MAX)]


class SpamActions(Frozen):
    """rspamd's score thresholds for inbound mail (null: never)."""

    add_header: Score | None = Field(default=6.0, description="Add X-Spam: Yes at this score.")
    rewrite_subject: Score | None = Field(
        default=None, description="Prefix the subject with ***SPAM*** at this score."
    )
    reject: Score | None = Field(default=15.0, description="Refuse the mail at DATA (5xx).")

    @model_validator(mode="after")
    def check_order(self) -> SpamActions:
        given = [
            (name, score)
            for name, score in (
                ("add_header", self.add_header),
                ("rewrite_subject", self.rewrite_subject),
                ("reject", self.reject),
            )
            if score is not None
        ]
        for (low, a), (high, b) in pairwise(given):
            if a >= b:
                raise ValueError(f"{low} ({a}) must be lower than {high} ({b})")
        return self


class FilterPorts(Frozen):
    """Loopback ports of the filtering daemons (127.0.0.1): change them only when another
    service holds one (or in tests)."""

    rspamd_proxy: Port = Field(default=11332, description="rspamd's milter (proxy worker).")
    rspamd_normal: Port = 11333
    rspamd_controller: Port = 11334
    srs_forward: Port = Field(default=10001, description="postsrsd's forward table.")
    srs_reverse: Port = 10002

    @model_validator(mode="after")
    def check_distinct(self) -> FilterPorts:
        ports = list(self.model_dump().values())
        if len(set(ports)) != len(ports):
            raise ValueError(f"two filter ports are the same: {ports}")
        return self
