"""The Flask application: configuration, sessions, CSRF, login and logout, and the pages'
shared plumbing (the current person, error pages). The pages are in `userpages` and
`domainpages`; what they change is decided in `changes`.

Sessions are Flask's signed cookies (Secure, HttpOnly, SameSite=Lax) holding the address, a
keyed fingerprint of the password hash it logged in with (a password changed elsewhere ends
every other session), the login time and the CSRF token; never a password or hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from flask import Flask, abort, current_app, g, redirect, render_template, request, session, url_for
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from compiler.load.diagnostics import InventoryError
from compiler.web.changes import AccessDenied, Actor, Changes
from compiler.web.directory import Directory
from compiler.web.forms import format_size
from compiler.web.gitstore import GitInventory, Person
from compiler.web.passcheck import DUMMY_HASH, verify_password
from compiler.web.secret import load_or_make_secret
from compiler.web.throttle import LoginThrottle, ThrottleRule

COMMITTER = Person("mailcfg web", "mailcfg-web@localhost")
MAX_FORM_BYTES = 256 * 1024
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class WebConfig:
    inventory: Path
    secret_file: Path
    server_admins: frozenset[str] = frozenset()
    behind_proxy: bool = False  # trust one proxy's X-Forwarded-For/-Proto/-Host
    apply: bool = False  # apply each commit to the hosts serving its domain
    push: tuple[str, str] | None = None  # or push each commit to (remote, branch) for review
    cache_dir: Path | None = None  # the build cache (None: the inventory's default one)
    roles_dir: Path | None = None  # the roles (None: the built-in ones)
    throttle: ThrottleRule = field(default_factory=ThrottleRule)
    session_seconds: float = 8 * 3600


@dataclass(frozen=True, slots=True)
class WebState:
    config: WebConfig
    store: GitInventory
    changes: Changes
    directory: Directory
    throttle: LoginThrottle
    secret: bytes


def web_state() -> WebState:
    return cast(WebState, current_app.extensions["mailcfg"])


def create_app(config: WebConfig) -> Flask:
    store = GitInventory(config.inventory, COMMITTER)
    secret = load_or_make_secret(config.secret_file, store.toplevel)
    app = Flask(__name__)
    app.secret_key = secret
    app.config.update(
        SESSION_COOKIE_NAME="mailcfg_session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=MAX_FORM_BYTES,
    )
    if config.behind_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    after = _after_commit(config, store)
    changes = Changes(store, after)
    app.extensions["mailcfg"] = WebState(
        config,
        store,
        changes,
        Directory(store, config.roles_dir, config.cache_dir),
        LoginThrottle(config.throttle),
        secret,
    )
    app.before_request(_check_request)
    app.after_request(_secure_headers)
    app.jinja_env.globals["csrf_token"] = lambda: session.get("csrf", "")
    app.jinja_env.filters["size"] = format_size
    app.register_error_handler(AccessDenied, _forbidden)
    app.register_error_handler(403, _forbidden)
    app.register_error_handler(InventoryError, _inventory_invalid)
    app.add_url_rule("/", "index", index)
    app.add_url_rule("/login", "login", login, methods=["GET", "POST"])
    app.add_url_rule("/logout", "logout", logout, methods=["POST"])
    from compiler.web.autoconfig import autoconfig
    from compiler.web.domainpages import domain_pages
    from compiler.web.statspages import stats_pages
    from compiler.web.userpages import user_pages

    app.register_blueprint(user_pages)
    app.register_blueprint(domain_pages)
    app.register_blueprint(autoconfig)
    app.register_blueprint(stats_pages)
    return app


def _after_commit(config: WebConfig, store: GitInventory) -> Callable[[str], str] | None:
    """What runs after each commit (given the domain): an apply or a push as the command line
    says, else as `web.after_commit` of the committed inventory says."""
    from compiler.web.deploy import after_commit_by_inventory, apply_domain, push_head

    if config.apply:
        return lambda domain: apply_domain(
            store.inventory, domain, config.cache_dir, config.roles_dir
        )
    if config.push is not None:
        remote, branch = config.push
        return lambda _domain: push_head(store.toplevel, remote, branch)
    return lambda domain: after_commit_by_inventory(
        store.inventory, store.toplevel, domain, config.cache_dir, config.roles_dir
    )


def password_fingerprint(secret: bytes, password_hash: str) -> str:
    return hmac.new(secret, password_hash.encode(), hashlib.sha256).hexdigest()[:32]


def _check_request() -> None:
    """CSRF on every POST (the token is per session, made on first visit); then who is in.
    The public autoconfiguration endpoints use no session (a mail client calls them)."""
    from compiler.web.autoconfig import PUBLIC_ENDPOINTS

    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint == "static":
        g.actor = None
        return
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    if request.method == "POST":
        sent = request.form.get("csrf", "")
        if not hmac.compare_digest(sent.encode(), str(session["csrf"]).encode()):
            abort(400, "the form is out of date (CSRF check failed); reload the page")
    g.actor = _session_actor()


def _session_actor() -> Actor | None:
    address = session.get("address")
    if not isinstance(address, str):
        return None
    state = web_state()
    if time.time() - float(session.get("since", 0)) > state.config.session_seconds:
        session.clear()
        return None
    found = state.directory.snapshot().account(address)
    if found is None or not found[1].enabled:
        session.clear()
        return None
    if session.get("pwfp") != password_fingerprint(state.secret, found[1].password):
        session.clear()
        return None
    return Actor(address, address in state.config.server_admins)


def _secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _forbidden(_exc: Exception) -> tuple[str, int]:
    return render_template("message.html", title="Forbidden", text="You may not do this."), 403


def _inventory_invalid(_exc: Exception) -> tuple[str, int]:
    """The working copy does not load (a bad commit pushed by hand): nothing can be shown."""
    text = "The server's inventory is invalid; an administrator must fix it in git first."
    return render_template("message.html", title="Unavailable", text=text), 503


def login_required(view: F) -> F:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if g.get("actor") is None:
            return redirect(url_for("login"))
        return view(*args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return cast(F, wrapped)


def actor() -> Actor:
    current: Actor | None = g.get("actor")
    if current is None:
        abort(403)
    return current


def index() -> Response:
    current: Actor | None = g.get("actor")
    if current is None:
        return redirect(url_for("login"))
    return redirect(url_for("user.summary", address=current.address))


def login() -> Any:
    if request.method == "GET":
        return render_template("login.html")
    state = web_state()
    address = request.form.get("address", "").strip().lower()[:320]
    password = request.form.get("password", "")
    ip = request.remote_addr or "unknown"
    wait = state.throttle.admit(address, ip)
    if wait > 0:
        text = f"Too many failed logins. Try again in {int(wait) + 1} seconds."
        return render_template("login.html", error=text, address=address), 429
    try:
        found = state.directory.snapshot().account(address)
    except InventoryError:
        text = "The server's inventory is invalid; logins are off until an admin fixes it."
        return render_template("login.html", error=text), 503
    usable = found is not None and found[1].enabled
    stored = found[1].password if found is not None and usable else DUMMY_HASH
    if not (verify_password(password, stored) and usable):
        state.throttle.record_failure(address, ip)
        return render_template(
            "login.html", error="Wrong address or password.", address=address
        ), 401
    state.throttle.record_success(address, ip)
    session.clear()
    session["address"] = address
    session["pwfp"] = password_fingerprint(state.secret, stored)
    session["since"] = time.time()
    session["csrf"] = secrets.token_urlsafe(32)
    return redirect(url_for("index"))


def logout() -> Response:
    session.clear()
    return redirect(url_for("login"))


def renew_fingerprint(address: str) -> None:
    """After the person changed their own password: keep this session (others end)."""
    state = web_state()
    found = state.directory.snapshot().account(address)
    if found is not None and session.get("address") == address:
        session["pwfp"] = password_fingerprint(state.secret, found[1].password)
