"""The domain-admin level's pages: one domain's accounts (add, settings, password, delete)
and redirects. A page is shown only to the domain's admins; every change is asked of
`changes`, which checks again against the domain file it commits to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from compiler.tools.passwd import PasswordError
from compiler.web.access import administered_domain
from compiler.web.app import actor, login_required, web_state
from compiler.web.changes import Actor
from compiler.web.forms import account_fields, lines_field
from compiler.web.gitstore import CommitRefused, Committed
from compiler.web.yamledit import EditError

domain_pages = Blueprint("domain", __name__, url_prefix="/domain")


def _context(domain_name: str) -> dict[str, Any]:
    view = administered_domain(domain_name)
    domain, person, admin_of = view.domain, view.person, view.admin_of
    redirects = {domain.address_of(r.name).lower(): r.to for r in domain.redirects}
    return {"domain": domain, "redirects": redirects, "admin_of": admin_of, "me": person}


def _save(domain_name: str, make: Callable[[Actor], Committed]) -> Any:
    try:
        committed = make(actor())
    except (EditError, PasswordError, CommitRefused) as exc:
        context = _context(domain_name)
        return render_template("domain.html", error=str(exc), form=request.form, **context), 400
    flash(f"Saved: {committed.message} (commit {committed.commit[:10]})")
    if committed.deployed:
        flash(committed.deployed)
    return redirect(url_for("domain.overview", domain_name=domain_name))


def _address(domain_name: str, name: str) -> str:
    name = name.strip()
    return name if "@" in name else f"{name}@{domain_name}"


@domain_pages.route("/<domain_name>")
@login_required
def overview(domain_name: str) -> Any:
    return render_template("domain.html", **_context(domain_name))


@domain_pages.route("/<domain_name>/accounts", methods=["POST"])
@login_required
def add(domain_name: str) -> Any:
    form = request.form

    def make(who: Actor) -> Committed:
        if form.get("password", "") != form.get("repeat", ""):
            raise EditError("the two passwords differ")
        address = _address(domain_name, form.get("name", ""))
        return web_state().changes.add_account(
            who, address, form.get("password", ""), account_fields(form)
        )

    return _save(domain_name, make)


@domain_pages.route("/<domain_name>/account/<address>", methods=["POST"])
@login_required
def settings(domain_name: str, address: str) -> Any:
    form = request.form
    action = form.get("action", "save")

    def make(who: Actor) -> Committed:
        changes = web_state().changes
        if action == "delete":
            return changes.delete_account(who, address)
        if action == "rename":
            return changes.rename_account(
                who, address, _address(domain_name, form.get("new_name", ""))
            )
        if action == "password":
            return changes.change_password(
                who, address, form.get("password", ""), form.get("repeat", "")
            )
        return changes.change_account(who, address, account_fields(form))

    return _save(domain_name, make)


@domain_pages.route("/<domain_name>/redirects", methods=["POST"])
@login_required
def redirects(domain_name: str) -> Any:
    form = request.form

    def make(who: Actor) -> Committed:
        address = _address(domain_name, form.get("name", ""))
        return web_state().changes.set_domain_redirect(who, address, lines_field(form, "to"))

    return _save(domain_name, make)
