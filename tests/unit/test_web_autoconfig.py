"""Mail client autoconfiguration served by the web app: Thunderbird autoconfig, Outlook
autodiscover (POX) and the Apple profile, from the services `mailcfg dns` publishes."""

from __future__ import annotations

import plistlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from flask import Flask

from compiler.web.app import WebConfig, create_app
from tests.webinventory import PASSWORD, make_web_inventory

MOZ = "/.well-known/autoconfig/mail/config-v1.1.xml"
AUTODISCOVER_REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
<Request><EMailAddress>bob@example.org</EMailAddress>
<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
</Request></Autodiscover>"""


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    web = make_web_inventory(tmp_path)
    return create_app(WebConfig(inventory=web.inventory, secret_file=tmp_path / "s" / "secret"))


def test_thunderbird_autoconfig_by_address_and_by_host(app: Flask) -> None:
    client = app.test_client()
    response = client.get(MOZ, query_string={"emailaddress": "carol@example.com"})
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    root = ET.fromstring(response.data)
    incoming = root.findall("./emailProvider/incomingServer")
    assert [(s.get("type"), s.findtext("port"), s.findtext("socketType")) for s in incoming][
        :2
    ] == [
        ("imap", "993", "SSL"),
        ("imap", "143", "STARTTLS"),
    ]
    assert {s.findtext("hostname") for s in incoming} == {"mx1.example.com", "mx2.example.com"}
    assert incoming[0].findtext("username") == "carol@example.com"
    outgoing = root.findall("./emailProvider/outgoingServer")
    assert ("465", "SSL") in [(s.findtext("port"), s.findtext("socketType")) for s in outgoing]
    by_host = client.get("/mail/config-v1.1.xml", headers={"Host": "autoconfig.example.org"})
    assert by_host.status_code == 200
    served = ET.fromstring(by_host.data).findall("./emailProvider/incomingServer/hostname")
    assert {h.text for h in served} == {"mx1.example.com"}  # example.org is on mx1 only
    assert client.get(MOZ, query_string={"emailaddress": "x@unknown.test"}).status_code == 404
    assert client.get(MOZ, query_string={"emailaddress": "<bad>"}).status_code == 400


def test_outlook_autodiscover(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/autodiscover/autodiscover.xml", data=AUTODISCOVER_REQUEST)
    assert response.status_code == 200  # no CSRF token: a mail client calls it
    text = response.get_data(as_text=True)
    protocols = re.findall(r"<Type>(\w+)</Type><Server>([^<]+)</Server><Port>(\d+)</Port>", text)
    assert protocols == [
        ("IMAP", "mx1.example.com", "993"),
        ("POP3", "mx1.example.com", "995"),
        ("SMTP", "mx1.example.com", "465"),
    ]
    assert "<LoginName>bob@example.org</LoginName>" in text
    ET.fromstring(response.data)
    assert client.post("/autodiscover/autodiscover.xml", data=b"<x/>").status_code == 400


def test_apple_profile_for_a_logged_in_account_only(app: Flask) -> None:
    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    assert client.get("/account/carol@example.com/mobileconfig").status_code == 302
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    client.post(
        "/login",
        data={"address": "carol@example.com", "password": PASSWORD, "csrf": token.group(1)},
    )
    response = client.get("/account/carol@example.com/mobileconfig")
    assert response.status_code == 200
    profile = plistlib.loads(response.data)
    mail = profile["PayloadContent"][0]
    assert mail["EmailAddress"] == "carol@example.com"
    assert mail["IncomingMailServerPortNumber"] == 993
    assert PASSWORD not in response.get_data(as_text=True)
    assert client.get("/account/bob@example.com/mobileconfig").status_code == 403
