"""The user level's pages: the account summary (client settings), password, redirect,
autoresponder, white and black lists. Each page shows its form; a POST asks `changes` to make
the change (which enforces who may) and redirects back with the commit, or shows why not.
The same pages serve a domain admin for any account of their domain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from compiler.tools.passwd import PasswordError
from compiler.web.access import visible_account
from compiler.web.app import actor, login_required, renew_fingerprint, web_state
from compiler.web.changes import Actor
from compiler.web.forms import checkbox, date_field, lines_field, text_field
from compiler.web.gitstore import CommitRefused, Committed
from compiler.web.yamledit import EditError

user_pages = Blueprint("user", __name__, url_prefix="/account")

SPAM_WARNING = (
    "If the white list is not active, the autoresponder answers all mail received, spam "
    "included: a spammer who gets the reply knows the address is read and will send more. "
    "Answer only whitelisted senders unless you must."
)


def _context(address: str) -> dict[str, Any]:
    """The account's data for a page; 403 unless the person may see it (their own account,
    or one of a domain they administer)."""
    view = visible_account(address)
    address, domain, account = view.address, view.domain, view.account
    person, admin_of = view.person, view.admin_of
    targets = next(
        (r.to for r in domain.redirects if domain.address_of(r.name).lower() == address), []
    )
    return {
        "address": address,
        "domain": domain,
        "account": account,
        "redirect_to": [t for t in targets if t.lower() != address],
        "redirect_copy": address in (t.lower() for t in targets),
        "admin_of": admin_of,
        "me": person,
    }


def _save(
    page: str,
    address: str,
    make: Callable[[Actor], Committed],
    after: Callable[[], None] = lambda: None,
) -> Any:
    try:
        committed = make(actor())
    except (EditError, PasswordError, CommitRefused) as exc:
        context = _context(address)
        return render_template(f"{page}.html", error=str(exc), form=request.form, **context), 400
    after()
    flash(f"Saved: {committed.message} (commit {committed.commit[:10]})")
    if committed.deployed:
        flash(committed.deployed)
    return redirect(url_for(f"user.{page}", address=address))


@user_pages.route("/<address>")
@login_required
def summary(address: str) -> Any:
    context = _context(address)
    settings = web_state().directory.snapshot().client_settings(context["domain"].domain)
    return render_template("summary.html", settings=settings, **context)


@user_pages.route("/<address>/password", methods=["GET", "POST"])
@login_required
def password(address: str) -> Any:
    if request.method == "GET":
        return render_template("password.html", **_context(address))
    form = request.form

    def after() -> None:
        renew_fingerprint(address.lower())

    return _save(
        "password",
        address,
        lambda who: web_state().changes.change_password(
            who, address, form.get("password", ""), form.get("repeat", "")
        ),
        after,
    )


@user_pages.route("/<address>/redirect", methods=["GET", "POST"], endpoint="redirect")
@login_required
def redirect_page(address: str) -> Any:
    if request.method == "GET":
        return render_template("redirect.html", **_context(address))
    form = request.form
    return _save(
        "redirect",
        address,
        lambda who: web_state().changes.change_redirect(
            who, address, form.get("mode", "none"), lines_field(form, "to")
        ),
    )


@user_pages.route("/<address>/autoresponder", methods=["GET", "POST"])
@login_required
def autoresponder(address: str) -> Any:
    if request.method == "GET":
        return render_template("autoresponder.html", warning=SPAM_WARNING, **_context(address))
    form = request.form

    def make(who: Actor) -> Committed:
        return web_state().changes.change_autoresponder(
            who,
            address,
            enabled=checkbox(form, "enabled"),
            subject=text_field(form, "subject", limit=1000).strip(),
            body=text_field(form, "body"),
            only_whitelisted=checkbox(form, "only_whitelisted"),
            start=date_field(form, "start"),
            end=date_field(form, "end"),
            remove=checkbox(form, "remove"),
        )

    return _save("autoresponder", address, make)


@user_pages.route("/<address>/lists", methods=["GET", "POST"])
@login_required
def lists(address: str) -> Any:
    if request.method == "GET":
        return render_template("lists.html", **_context(address))
    form = request.form
    which = form.get("which", "")

    def make(who: Actor) -> Committed:
        entries = lines_field(form, "entries")
        return web_state().changes.change_sender_list(
            who, address, which, checkbox(form, "enabled"), entries
        )

    return _save("lists", address, make)
