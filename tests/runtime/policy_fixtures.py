"""Agent configs and policy requests for the policy tests."""

from __future__ import annotations

from typing import Any

from schemas.agent import AgentConfig

BASE: dict[str, Any] = {
    "host": "mx1",
    "hostname": "mx1.example.com",
    "listen": "unix:/tmp/unused.sock",
    "state": "sqlite:///tmp/unused.db",
    "local_domains": ["example.com"],
    "accounts": {
        "alice@example.com": {"limits": {"per_hour": 3, "per_day": 100}},
        "bob@example.com": {
            "blacklist": {"enabled": True, "entries": ["spam@bad.org", "@evil.net"]},
            "limits": {"per_hour": 5, "on_exceed": "defer"},
        },
        "carol@example.com": {
            "whitelist": {"enabled": True, "entries": ["friend@ok.org", "@family.net"]},
            "blacklist": {"enabled": True, "entries": ["@family.net"]},
            "limits": {"per_hour": 2, "count": "messages"},
        },
    },
    "redirects": {"sales@example.com": ["alice@example.com"]},
    "global_filter": ["casino", "/^promo[0-9]+@/"],
    "global_filter_reject_text": "Sender rejected by the input filter",
    "whitelist_reject_text": "Ask carol to add you to her whitelist",
    "spam": {"spf": False, "dnsbl": []},
    "default_limits": {"per_hour": 10},
    "postmaster": "postmaster@example.com",
}


def make_config(**overrides: Any) -> AgentConfig:
    data = {**BASE, **overrides}
    return AgentConfig.model_validate(data)


def inbound(rcpt: str, sender: str, client: str = "127.0.0.1", **kw: str) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": client,
        "helo_name": kw.pop("helo", "mail.sender.test"),
        "sender": sender,
        "recipient": rcpt,
        "instance": kw.pop("instance", "123.abc.1"),
        **kw,
    }


def outbound(user: str, rcpts: int = 1, instance: str = "1.a.1") -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "END-OF-MESSAGE",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.7",
        "sasl_method": "PLAIN",
        "sasl_username": user,
        "sender": user,
        "recipient": "",
        "recipient_count": str(rcpts),
        "instance": instance,
    }


def encode(req: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in req.items()).encode() + b"\n"
