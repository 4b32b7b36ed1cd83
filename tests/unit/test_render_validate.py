"""The rendered tree passes the real tools: each role's build and validate commands (postmap,
postconf, postfix check, doveconf) run on a staged tree, as the apply engine runs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, make_activations, role_defaults
from schemas.domain import Account, Domain, Redirect
from schemas.inventory import HostSpec, Inventory

H = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=mx.example.com",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        capture_output=True, check=True,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


def make_inventory(host_root: Path, cert: tuple[Path, Path], **policy: Any) -> Inventory:
    paths = {
        "postfix_config_dir": "/etc/postfix",
        "postfix_queue_dir": str(host_root / "spool"),
        "postfix_data_dir": str(host_root / "data"),
        "maillog_file": str(host_root / "mail.log"),
        "dovecot_log": str(host_root / "dovecot.log"),
        "dovecot_base_dir": str(host_root / "run"),
    }
    (host_root / "spool").mkdir(parents=True, exist_ok=True)
    (host_root / "data").mkdir(parents=True, exist_ok=True)
    shutil.chown(host_root / "data", "postfix", "postfix")
    host_policy = {
        "paths": paths,
        "tls": {"cert": str(cert[0]), "key": str(cert[1])},
        **policy,
    }
    dom = Domain(
        domain="example.com",
        accounts=[Account(name="a", password=H, quota="1G"), Account(name="b", password=H)],
        redirects=[Redirect(name="r", to=["a@example.com", "x@example.net"])],
    )
    return Inventory(
        hosts={"mx": HostSpec(address="192.0.2.1", hostname="mx.example.com", policy=host_policy)},
        domains={"example.com": dom},
    )


def stage_and_validate(tmp_path: Path, inv: Inventory) -> subprocess.CompletedProcess[str]:
    """Write the tree under a staging dir, run every build then validate command; return the
    first failing command's result (or the last one)."""
    roles = load_roles(default_roles_dir())
    cfg = resolve_host(inv, "mx", role_defaults(roles))
    tree = render_host(cfg, roles)
    stage = tmp_path / "stage"
    for path in tree:
        target = stage / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tree[path].content)
    result = subprocess.CompletedProcess[str]([], 0, "", "")
    for act in make_activations(cfg, roles, {f.role for f in tree.values()}):
        for command in (*act.build, *act.validate):
            result = subprocess.run(
                ["/bin/sh", "-c", command.replace("{stage}", str(stage))],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                return result
    return result


def test_rendered_tree_passes_postfix_and_dovecot(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    result = stage_and_validate(tmp_path, make_inventory(tmp_path / "host", cert))
    assert result.returncode == 0, result.stderr
    # The maps were built next to the staged sources.
    assert (tmp_path / "stage/etc/postfix/virtual_alias_maps.db").is_file()


def test_postconf_reports_no_unknown_parameter(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    inv = make_inventory(tmp_path / "host", cert)
    roles = load_roles(default_roles_dir())
    tree = render_host(resolve_host(inv, "mx", role_defaults(roles)), roles)
    conf = tmp_path / "pf"
    conf.mkdir()
    (conf / "main.cf").write_bytes(tree["/etc/postfix/main.cf"].content)
    (conf / "master.cf").write_bytes(tree["/etc/postfix/master.cf"].content)
    out = subprocess.run(
        ["postconf", "-c", str(conf), "-n"], capture_output=True, text=True, check=True
    )
    assert out.stderr == ""
    assert "smtpd_tls_auth_only = yes" in out.stdout
    assert "reject_unauth_destination" in out.stdout


def test_misspelt_postfix_main_parameter_fails_validation(
    tmp_path: Path, cert: tuple[Path, Path]
) -> None:
    inv = make_inventory(
        tmp_path / "host", cert, postfix_main={"smtpd_tls_securty_level": "encrypt"}
    )
    result = stage_and_validate(tmp_path, inv)
    assert result.returncode != 0
    assert "unused parameter: smtpd_tls_securty_level=encrypt" in result.stderr


def test_bad_postfix_main_value_fails_validation(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    inv = make_inventory(tmp_path / "host", cert, postfix_main={"line_length_limit": "lots"})
    result = stage_and_validate(tmp_path, inv)
    assert result.returncode != 0
    assert "bad numerical configuration: line_length_limit = lots" in result.stderr


def test_missing_certificate_fails_dovecot_validation(
    tmp_path: Path, cert: tuple[Path, Path]
) -> None:
    inv = make_inventory(
        tmp_path / "host", cert, tls={"cert": str(tmp_path / "nope.pem"), "key": str(cert[1])}
    )
    result = stage_and_validate(tmp_path, inv)
    assert result.returncode != 0
    assert "nope.pem" in result.stderr
