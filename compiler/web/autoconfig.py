"""Mail client autoconfiguration from the same app: Thunderbird's autoconfig XML (at
`/.well-known/autoconfig/mail/config-v1.1.xml` and, for `autoconfig.<domain>`, at
`/mail/config-v1.1.xml`), Outlook's autodiscover (POX), and an Apple `.mobileconfig` of a
logged-in account. The servers and ports are the ones `mailcfg dns` publishes as SRV records
(its autoconfig/autodiscover CNAMEs point here). Public endpoints answer only for the
inventory's domains and never say whether an account exists.
"""

from __future__ import annotations

import plistlib
import re
import uuid
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

from flask import Blueprint, Response, abort, request

from compiler.web.access import visible_account
from compiler.web.app import login_required, web_state
from compiler.web.directory import ClientSetting

autoconfig = Blueprint("autoconfig", __name__)

MAX_REQUEST = 10_000
_EMAIL_IN_REQUEST = re.compile(rb"<EMailAddress>\s*([^<\s]{1,320})\s*</EMailAddress>", re.I)
_ADDRESS = re.compile(r"[A-Za-z0-9._%+=-]{1,64}@[A-Za-z0-9.-]{1,253}")
PUBLIC_ENDPOINTS = frozenset({"autoconfig.thunderbird", "autoconfig.autodiscover"})


def _settings_for(domain: str) -> list[ClientSetting]:
    snapshot = web_state().directory.snapshot()
    if domain not in snapshot.inventory.domains:
        abort(404)
    return snapshot.client_settings(domain)


def _domain_of_request() -> tuple[str, str]:
    """(domain, address or the client's placeholder) from `emailaddress` or the Host."""
    address = request.args.get("emailaddress", "").strip()
    if address:
        if not _ADDRESS.fullmatch(address):
            abort(400)
        return address.rpartition("@")[2].lower(), address
    host = (request.host or "").split(":")[0].lower()
    if not host.startswith("autoconfig."):
        abort(404)
    return host.removeprefix("autoconfig."), "%EMAILADDRESS%"


def _first(settings: Sequence[ClientSetting], kind: str) -> list[ClientSetting]:
    return [s for s in settings if s.kind == kind]


def thunderbird_xml(domain: str, username: str, settings: Sequence[ClientSetting]) -> str:
    def server(tag: str, s: ClientSetting) -> str:
        return (
            f'    <{tag} type="{s.kind}">\n'
            f"      <hostname>{escape(s.server)}</hostname>\n"
            f"      <port>{s.port}</port>\n"
            f"      <socketType>{'SSL' if s.implicit_tls else 'STARTTLS'}</socketType>\n"
            f"      <authentication>password-cleartext</authentication>\n"
            f"      <username>{escape(username)}</username>\n"
            f"    </{tag}>\n"
        )

    incoming = [*_first(settings, "imap"), *_first(settings, "pop3")]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<clientConfig version="1.1">\n'
        f'  <emailProvider id="{escape(domain)}">\n'
        f"    <domain>{escape(domain)}</domain>\n"
        f"    <displayName>{escape(domain)}</displayName>\n"
        + "".join(server("incomingServer", s) for s in incoming)
        + "".join(server("outgoingServer", s) for s in _first(settings, "smtp"))
        + "  </emailProvider>\n</clientConfig>\n"
    )


def autodiscover_xml(address: str, settings: Sequence[ClientSetting]) -> str:
    def protocol(s: ClientSetting) -> str:
        tls = "<SSL>on</SSL>" if s.implicit_tls else "<SSL>off</SSL><Encryption>TLS</Encryption>"
        return (
            f"<Protocol><Type>{s.kind.upper()}</Type><Server>{escape(s.server)}</Server>"
            f"<Port>{s.port}</Port><DomainRequired>off</DomainRequired>"
            f"<LoginName>{escape(address)}</LoginName><SPA>off</SPA>{tls}"
            "<AuthRequired>on</AuthRequired></Protocol>"
        )

    chosen = [group[0] for k in ("imap", "pop3", "smtp") if (group := _first(settings, k))]
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006">'
        '<Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a">'
        "<Account><AccountType>email</AccountType><Action>settings</Action>"
        + "".join(protocol(s) for s in chosen)
        + "</Account></Response></Autodiscover>\n"
    )


def mobileconfig(address: str, settings: Sequence[ClientSetting]) -> bytes:
    """An Apple configuration profile: IMAP (else POP3) in, SMTP out; no password in it."""
    incomings = _first(settings, "imap") or _first(settings, "pop3")
    outgoings = _first(settings, "smtp")
    if not incomings or not outgoings:
        abort(404)
    incoming, outgoing = incomings[0], outgoings[0]
    domain = address.rpartition("@")[2]
    ident = f"mailcfg.{domain}.{address.partition('@')[0]}"
    mail: dict[str, Any] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.mail",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{address}#mail")),
        "PayloadDisplayName": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.kind == "imap" else "EmailTypePOP",
        "EmailAccountName": address,
        "EmailAddress": address,
        "IncomingMailServerHostName": incoming.server,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": outgoing.server,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{address}")),
        "PayloadDisplayName": f"Mail: {address}",
        "PayloadContent": [mail],
    }
    return plistlib.dumps(profile)


@autoconfig.route("/.well-known/autoconfig/mail/config-v1.1.xml", endpoint="thunderbird")
@autoconfig.route("/mail/config-v1.1.xml", endpoint="thunderbird")
def thunderbird() -> Response:
    domain, username = _domain_of_request()
    body = thunderbird_xml(domain, username, _settings_for(domain))
    return Response(body, mimetype="application/xml")


@autoconfig.route("/autodiscover/autodiscover.xml", methods=["POST"], endpoint="autodiscover")
@autoconfig.route("/Autodiscover/Autodiscover.xml", methods=["POST"], endpoint="autodiscover")
def autodiscover() -> Response:
    data = request.get_data(cache=False)[:MAX_REQUEST]
    found = _EMAIL_IN_REQUEST.search(data)
    if not found or not _ADDRESS.fullmatch(found.group(1).decode("ascii", "replace")):
        abort(400)
    address = found.group(1).decode()
    body = autodiscover_xml(address, _settings_for(address.rpartition("@")[2].lower()))
    return Response(body, mimetype="application/xml")


@autoconfig.route("/account/<address>/mobileconfig", endpoint="mobileconfig")
@login_required
def mobileconfig_download(address: str) -> Response:
    view = visible_account(address)
    address = view.address
    body = mobileconfig(address, view.snapshot.client_settings(address.rpartition("@")[2]))
    return Response(
        body,
        mimetype="application/x-apple-aspen-config",
        headers={"Content-Disposition": f'attachment; filename="{address}.mobileconfig"'},
    )
