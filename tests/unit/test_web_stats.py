"""A domain admin's statistics page: the agents' counters from the local hosts serving the
domain (the real `mailcfg-agent stats` below each root), every counter per account and day,
a chart per account, the suspicious rows marked; other domains' accounts and admins kept out."""

from __future__ import annotations

import re
from pathlib import Path

from flask.testing import FlaskClient

from compiler.web.app import WebConfig, create_app
from compiler.web.deploy import apply_domain
from runtime.state.sqlite import SqliteStore
from tests.webinventory import PASSWORD, make_web_inventory

STATE = "var/lib/mailcfg/agent/state.db"


def _login(client: FlaskClient, address: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    client.post("/login", data={"address": address, "password": PASSWORD, "csrf": token.group(1)})


def test_the_domain_statistics_page(tmp_path: Path) -> None:
    web = make_web_inventory(tmp_path)
    cache = tmp_path / "cache"
    apply_domain(web.inventory, "example.com", cache)  # the agents' configs on both roots
    roots = web.inventory / ".mailcfg" / "hosts"
    for host, sent in (("mx1", 40), ("mx2", 30)):
        store = SqliteStore(roots / host / STATE)
        store.add_stats("2026-12-01", "bob@example.com", {"sent": sent, "imap_logins": 3})
        store.add_stats("2026-12-02", "bob@example.com", {"sent": 2, "login_failures": 9})
        store.add_stats("2026-12-02", "carol@example.com", {"received": 5})
        store.add_stats("2026-12-02", "orders@example.org", {"sent": 1})
        if host == "mx2":
            store.lock("bob@example.com", "per_day 300 exceeded (301)", 0.0)
            store.lock("orders@example.org", "per_hour exceeded", 0.0)
        store.close()
    app = create_app(
        WebConfig(inventory=web.inventory, secret_file=tmp_path / "s" / "secret", cache_dir=cache)
    )
    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    _login(client, "alice@example.com")
    page = client.get("/domain/example.com/stats").get_data(as_text=True)
    rows = re.findall(
        r"<tr( class=\"alert\")?>\s*<td>([\d-]+)</td><td>([^<]+)</td>(.*?)</tr>", page, re.S
    )
    seen = {
        (day, account): (bool(alert), re.findall(r'"n">(\d+)<', cells))
        for alert, day, account, cells in rows
    }
    assert set(seen) == {
        ("2026-12-01", "bob@example.com"),
        ("2026-12-02", "bob@example.com"),
        ("2026-12-02", "carol@example.com"),
    }  # no account of example.org
    alert, counters = seen[("2026-12-01", "bob@example.com")]
    assert not alert and counters[:3] == ["0", "6", "70"]  # pop3, imap, sent summed over hosts
    assert seen[("2026-12-02", "bob@example.com")][0]  # login failures mark the row
    assert page.count("<svg xmlns") == 2  # a chart for bob and one for carol
    locks = re.findall(r'<tr class="alert"><td>([^<]+)</td><td>(\w+)</td><td>([^<]+)</td>', page)
    assert locks == [("bob@example.com", "mx2", "per_day 300 exceeded (301)")]
    assert "limit 300 a day" in page and "limit 500 a day" in page  # bob's own; mx2's for carol
    _login(client, "carol@example.com")
    assert client.get("/domain/example.com/stats").status_code == 403
    _login(client, "bob@example.org")
    assert client.get("/domain/example.com/stats").status_code == 403
    assert client.get("/domain/example.org/stats").status_code == 200
