"""rspamd's Bayes classifier: shared or per account, and learning from what users file as Junk.

Bayes needs Redis (rspamd keeps its statistics there: the agent's `policy_state`) and rspamd
(`spam_actions` gives it its scores); `schemas.policy.ServerPolicy` checks both.
"""

from __future__ import annotations

from pydantic import Field

from schemas.common import Frozen


class Bayes(Frozen):
    """rspamd's Bayes statistics in the agent's Redis. Without this key a host with
    `spam_actions` and a Redis `policy_state` has one shared Bayes, learnt by autolearn only."""

    per_user: bool = Field(
        default=False,
        description="Statistics per account (rspamd's per_user: keyed by the message's first "
        "recipient, or by the user who files the mail): each account's mail is judged by what "
        "it was taught, and gets Bayes verdicts only after 200 learns of its own. false: one "
        "Bayes for the host.",
    )
    learn_from_junk: bool = Field(
        default=True,
        description="On hosts that also run Dovecot: mail a user moves or copies into Junk "
        "over IMAP is learnt as spam, mail moved out of Junk (not to Trash) as ham "
        "(Dovecot's IMAPSieve pipes it to rspamc on loopback).",
    )
