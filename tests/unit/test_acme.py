"""ACME certificates without a CA: the `tls.acme` values, the snakeoil warning of every load,
what the acme role renders and runs, and the on-host `activate` its renewal hook calls (the
shipped program, run as a host runs it). The CA itself is tests/e2e/test_acme_pebble.py's."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from compiler.load.inventory import load_inventory
from compiler.push.hostcall import activation_to_json
from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, make_activations, role_defaults
from compiler.types import Activation
from schemas.inventory import HostSpec, Inventory
from schemas.policy import ACME_CERT, ACME_KEY, ServerPolicy
from tests.unit.onhost_program import STATE, run_program
from tests.unit.test_onhost import apply, reloads, tree_of

ACME = {"email": "hostmaster@example.com", "directory": "https://acme.example.net/directory"}
ROLES = load_roles(default_roles_dir())


def tls(**acme: Any) -> ServerPolicy:
    return ServerPolicy.model_validate({"tls": {"acme": {**ACME, **acme}}})


# --- values -------------------------------------------------------------------------------------


def test_acme_uses_certbots_pair() -> None:
    policy = tls(names=["imap.example.com"], ca_bundle="/etc/mailcfg/ca.pem")
    assert (policy.tls.cert, policy.tls.key) == (ACME_CERT, ACME_KEY)
    # Its dump validates again (the policy layers dump and merge it).
    assert ServerPolicy.model_validate(policy.model_dump(mode="json")) == policy


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("directory", "http://acme.example.net/directory", "https only"),
        ("directory", "https://acme.example.net/dir?x=$(id)", "not an ACME directory URL"),
        ("directory", "https://acme.example.net/dir\nx", "not an ACME directory URL"),
        ("directory", "https://user@acme.example.net/dir", "not an ACME directory URL"),
        ("directory", "https://acme.example.net:0/dir", "not an ACME directory URL"),
        ("email", "root", "not an address"),
        ("email", "a b@example.com", "not a valid local part"),
        ("names", ["imap.example.com", "imap.example.com"], "listed twice"),
        ("names", ["imap example.com"], "not a domain name"),
        ("names", ["*.example.com"], "not a domain name"),
        ("challenge", "dns-01", "http-01"),
        ("http_port", 0, "greater than or equal to 1"),
        ("ca_bundle", "etc/ca.pem", "not absolute"),
        ("ca_bundle", "/etc/ca.pem;id", "shell metacharacters"),
    ],
)
def test_bad_acme_values_are_refused(field: str, value: object, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        tls(**{field: value})
    assert problem in str(info.value)
    assert f"tls.acme.{field}" in str(info.value)


def test_another_pair_beside_acme_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"tls\.cert ./etc/ssl/mail\.pem. and tls\.acme"):
        ServerPolicy.model_validate({"tls": {"cert": "/etc/ssl/mail.pem", "acme": ACME}})


# --- the snakeoil warning -------------------------------------------------------------------------


def load_warnings(tmp_path: Path, main: str) -> list[str]:
    (tmp_path / "domains").mkdir(exist_ok=True)
    (tmp_path / "mailcfg.yml").write_text(textwrap.dedent(main))
    loaded = load_inventory(tmp_path)
    return [w.format().replace(f"{tmp_path}/", "") for w in loaded.warnings]


def test_snakeoil_pair_is_a_warning_where_it_is_chosen(tmp_path: Path) -> None:
    warnings = load_warnings(
        tmp_path,
        """\
        hosts:
          mx1: {address: 192.0.2.1, hostname: mx1.example.com}
          mx2:
            address: 192.0.2.2
            hostname: mx2.example.com
            policy: {tls: {cert: /etc/ssl/certs/ssl-cert-snakeoil.pem}}
          mx3:
            address: 192.0.2.3
            hostname: mx3.example.com
            policy: {tls: {acme: {email: a@example.com, directory: "https://ca.example/dir"}}}
          mx4: {address: 192.0.2.4, hostname: mx4.example.com, transport: local, root: r}
        """,
    )
    assert [w.split(": host ")[0] for w in warnings] == [
        "mailcfg.yml:2:3: warning: hosts.mx1",  # default cert: at the host
        "mailcfg.yml:6:26: warning: hosts.mx2.policy.tls.cert",  # named: where it is named
    ]
    assert "snakeoil certificate (/etc/ssl/certs/ssl-cert-snakeoil.pem)" in warnings[0]
    assert "set policy.tls.acme" in warnings[0]


def test_snakeoil_warning_reaches_every_plan(tmp_path: Path) -> None:
    from compiler.cli import main

    root = tmp_path / "host"
    (tmp_path / "inv" / "domains").mkdir(parents=True)
    (tmp_path / "inv" / "mailcfg.yml").write_text(
        f"hosts:\n  mx1: {{address: 192.0.2.1, hostname: mx1.example.com, roles: [postfix],"
        f" transport: ssh}}\n  mx2: {{address: 192.0.2.2, hostname: mx2.example.com,"
        f" transport: local, root: {root}}}\n"
    )
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        main(["plan", str(tmp_path / "inv"), "--host", "mx2", "--cache", str(tmp_path / "c")])
    assert "warning: hosts.mx1: host mx1 serves Debian's self-signed snakeoil" in err.getvalue()


# --- the acme role ------------------------------------------------------------------------------


def acme_host(roles: list[str] | None = None, **acme: Any) -> Inventory:
    spec: dict[str, Any] = {
        "address": "192.0.2.10",
        "hostname": "mx1.example.com",
        "policy": {"tls": {"acme": {**ACME, **acme}}},
    }
    if roles is not None:
        spec["roles"] = roles
    return Inventory(hosts={"mx1": HostSpec.model_validate(spec)})


def activation(inv: Inventory, role: str) -> Activation:
    cfg = resolve_host(inv, "mx1", role_defaults(ROLES))
    (found,) = make_activations(cfg, ROLES, [role])
    return found


def test_acme_role_comes_with_tls_acme_only() -> None:
    plain = Inventory(hosts={"mx1": HostSpec(address="192.0.2.10", hostname="mx1.example.com")})
    tree = render_host(resolve_host(plain, "mx1", role_defaults(ROLES)), ROLES)
    assert {f.role for f in tree.values()} == {"postfix", "dovecot", "agent"}
    assert activation(plain, "acme").build == ()  # no request, no certbot
    inv = acme_host(roles=["dovecot"])
    tree = render_host(resolve_host(inv, "mx1", role_defaults(ROLES)), ROLES)
    hook = tree["/etc/letsencrypt/renewal-hooks/deploy/mailcfg"]
    assert hook.mode == 0o755 and hook.role == "acme"
    # Only the roles the host has that read the pair are reloaded.
    assert hook.content.decode().splitlines()[-1] == (
        "exec /usr/bin/python3 -I -S /var/lib/mailcfg/onhost.pyz activate --root / --role dovecot"
    )
    assert "/etc/systemd/system/certbot.service.d/mailcfg.conf" not in tree  # no ca_bundle


def test_certbot_command_quotes_every_value_and_reads_the_request_from_a_file() -> None:
    inv = acme_host(ca_bundle="/etc/mailcfg/pebble-ca.pem", names=["imap.example.com"])
    (command,) = activation(inv, "acme").build
    assert "REQUESTS_CA_BUNDLE=/etc/mailcfg/pebble-ca.pem certbot --config " in command
    assert "'{stage}/etc/mailcfg/certbot.ini' certonly $force" in command
    assert "'server = https://acme.example.net/directory'" in command
    cfg = resolve_host(inv, "mx1", role_defaults(ROLES))
    ini = render_host(cfg, ROLES)["/etc/mailcfg/certbot.ini"].content.decode()
    assert "domains = mx1.example.com,imap.example.com\n" in ini
    assert "no-directory-hooks = true\n" in ini  # the apply holds the lock the hook waits for


def test_certbot_is_not_run_on_a_local_root(tmp_path: Path) -> None:
    """A local root is a preview: certbot would act on this machine."""
    inv = acme_host()
    (command,) = activation(inv, "acme").build
    root = tmp_path / "root"
    (root / STATE).mkdir(parents=True)
    act = activation(inv, "acme")
    tree = tree_of({"/etc/mailcfg/certbot.ini": (b"x\n", "acme")})
    result = apply(root, tree, "r1", (act,), env={"MAILCFG_SERVICES": "auto"})
    assert result["ok"], result
    assert any("certbot not run on a local root" in w for w in result["warnings"]), result
    assert command  # the same command the host runs


# --- activate -----------------------------------------------------------------------------------

POSTFIX = Activation(
    "postfix", "postfix", "reload", apply=("echo postfix-r1 >> reloads",), verify=("true",)
)
DOVECOT = Activation("dovecot", "dovecot", "reload", apply=("echo dovecot >> reloads",))


def activate(root: Path, *roles: str) -> tuple[int, dict[str, Any]]:
    argv = [a for r in roles for a in ("--role", r)]
    proc = run_program(root, "activate", *argv)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "host"
    (r / STATE).mkdir(parents=True)
    return r


def test_activate_runs_the_recorded_reload_of_the_newest_release_that_changed_the_role(
    root: Path,
) -> None:
    files = {"/etc/postfix/main.cf": b"a\n", "/etc/dovecot/dovecot.conf": (b"d\n", "dovecot")}
    assert apply(root, tree_of(files), "r1", (DOVECOT, POSTFIX))["ok"]
    # r2 changes only the agent: its record holds no postfix or dovecot activation.
    agent = Activation("agent", "mailcfg-agent", "restart", apply=("echo agent >> reloads",))
    files2 = {**files, "/etc/mailcfg/agent.json": (b"{}\n", "agent")}
    assert apply(root, tree_of(files2), "r2", (agent,))["ok"]
    (root / "reloads").unlink()
    code, reply = activate(root, "postfix", "dovecot")
    assert (code, reply["ok"], reply["release_id"]) == (0, True, "r2"), reply
    assert reply["roles"] == ["dovecot", "postfix"]
    assert reloads(root) == ["dovecot", "postfix-r1"]  # role name order, as an apply


def test_activate_failure_is_reported_and_changes_nothing(root: Path) -> None:
    failing = Activation("postfix", "postfix", "reload", apply=("echo no >&2; exit 3",))
    assert apply(root, tree_of({"/etc/postfix/main.cf": b"a\n"}), "r1", (DOVECOT,))["ok"]
    # A release whose postfix reload fails, recorded: applied with a passing one, then the
    # record edited as a later role change would have left it.
    record = root / STATE / "releases/r1/release.json"
    doc = json.loads(record.read_text())
    doc["activations"].append(activation_to_json(failing))
    record.write_text(json.dumps(doc))
    code, reply = activate(root, "postfix")
    assert (code, reply["ok"], reply["step"]) == (1, False, "activate"), reply
    assert "exit 3: no" in reply["message"]
    assert (root / STATE / "current").read_text().strip() == "r1"


def test_activate_names_what_it_cannot_find(root: Path) -> None:
    code, reply = activate(root, "postfix")
    assert (code, reply["ok"]) == (1, False)
    assert "no current release" in reply["message"]
    assert apply(root, tree_of({"/etc/dovecot/x": (b"d\n", "dovecot")}), "r1", (DOVECOT,))["ok"]
    code, reply = activate(root, "postfix")
    assert "no stored release back from r1 changed role(s) postfix" in reply["message"]
    code, reply = activate(root, "post fix")
    assert (code, reply["step"]) == (1, "input")
    code, reply = activate(root)
    assert (code, reply["step"]) == (1, "input")
