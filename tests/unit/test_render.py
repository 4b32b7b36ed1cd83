"""Rendering behaviour: roles, ownership, sensitivity, policy hooks, overrides, activations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.push.hostside.wire import AGENT_HOME
from compiler.render.render import render_host
from compiler.render.resolve import HostConfig, resolve_host
from compiler.render.roles import (
    RoleError,
    default_roles_dir,
    load_roles,
    make_activations,
    role_defaults,
)
from schemas.agent import AgentConfig
from schemas.domain import Account, Autoresponder, Domain
from schemas.inventory import HostSpec, Inventory
from tests.reference_render import make_agent_config

H = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"
ROLES = load_roles(default_roles_dir())


def make_cfg(roles: list[str] | None = None, **policy: object) -> HostConfig:
    spec = HostSpec(address="192.0.2.1", hostname="mx.example.com", policy=policy)
    if roles is not None:
        spec = spec.model_copy(update={"roles": roles})
    inv = Inventory(
        hosts={"mx": spec},
        domains={
            "example.com": Domain(domain="example.com", accounts=[Account(name="a", password=H)])
        },
    )
    return resolve_host(inv, "mx", role_defaults(ROLES))


def text(cfg: HostConfig, path: str) -> str:
    return render_host(cfg, ROLES)[path].content.decode()


def test_passwd_file_is_private_and_sensitive() -> None:
    f = render_host(make_cfg(), ROLES)["/etc/dovecot/users"]
    assert (f.mode, f.owner, f.group, f.sensitive, f.role) == (0o640, "root", "dovecot", True,
                                                                "dovecot")  # fmt: skip


def test_only_the_hosts_roles_are_rendered() -> None:
    tree = render_host(make_cfg(roles=["postfix"]), ROLES)
    assert {f.role for f in tree.values()} == {"postfix"}


def test_policy_hook_only_with_the_agent_role() -> None:
    with_agent = text(make_cfg(), "/etc/postfix/main.cf")
    assert (
        "check_policy_service { unix:/run/mailcfg/policy.sock, default_action=DEFER_IF_PERMIT"
        in (with_agent)
    )
    assert "default_action=DEFER," in with_agent  # outbound (end of data) fail action
    without = text(make_cfg(roles=["postfix", "dovecot"]), "/etc/postfix/main.cf")
    assert "check_policy_service" not in without


def test_fail_actions_come_from_the_policy() -> None:
    main = text(
        make_cfg(policy_fail_action_inbound="DUNNO", policy_fail_action_outbound="DUNNO"),
        "/etc/postfix/main.cf",
    )
    assert "default_action=DEFER_IF_PERMIT" not in main
    assert "mailcfg_submission_eod_restrictions = check_policy_service" in main
    assert "default_action=DUNNO" in main


def test_never_an_open_relay_and_auth_only_over_tls() -> None:
    main = text(make_cfg(), "/etc/postfix/main.cf")
    assert (
        "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, "
        "reject_unauth_destination" in main
    )
    assert "smtpd_tls_auth_only = yes" in main
    assert "smtpd_sasl_auth_enable = no" in main  # port 25; master.cf enables it on submission
    dovecot = text(make_cfg(), "/etc/dovecot/dovecot.conf")
    assert "disable_plaintext_auth = yes" in dovecot
    assert "ssl = required" in dovecot


def test_listeners_follow_the_model() -> None:
    cfg = make_cfg(
        listeners={
            "smtp": {"port": 2025, "address": "192.0.2.1"},
            "submission_alt": {"enabled": False, "port": 2525},
            "pop3": {"enabled": False, "port": 110},
            "pop3s": {"enabled": False, "port": 995},
        }
    )
    master = text(cfg, "/etc/postfix/master.cf")
    assert master.splitlines()[2].startswith("192.0.2.1:2025 inet")
    assert "\n2525 inet" not in master
    assert "\n587 inet" in master and "smtpd_tls_wrappermode=yes" in master
    dovecot = text(cfg, "/etc/dovecot/dovecot.conf")
    assert "protocols = imap lmtp" in dovecot


def test_postfix_main_extra_parameters_and_overrides() -> None:
    main = text(make_cfg(postfix_main={"delay_warning_time": "4h"}), "/etc/postfix/main.cf")
    assert "\ndelay_warning_time = 4h\n" in main
    assert "\nsmtpd_tls_loglevel = 1\n" in main  # from roles/postfix/defaults.yml
    main = text(make_cfg(postfix_main={"smtpd_tls_loglevel": "0"}), "/etc/postfix/main.cf")
    assert "\nsmtpd_tls_loglevel = 0\n" in main


def test_maillog_file_is_allowed_by_prefixes() -> None:
    main = text(make_cfg(paths={"maillog_file": "/srv/log/postfix.log"}), "/etc/postfix/main.cf")
    assert "maillog_file = /srv/log/postfix.log\n" in main
    assert "maillog_file_prefixes = /var, /dev/stdout, /srv/log/postfix.log\n" in main


def test_agent_json_is_the_agent_config() -> None:
    cfg = make_cfg()
    raw = text(cfg, "/etc/mailcfg/agent.json")
    loaded = AgentConfig.model_validate_json(raw)
    assert loaded == make_agent_config(cfg)
    assert list(json.loads(raw)) == sorted(json.loads(raw))
    assert loaded.listen == "unix:/run/mailcfg/policy.sock"
    assert loaded.accounts["a@example.com"].limits == cfg.limits["a@example.com"]


def test_agent_unit_is_hardened() -> None:
    unit = text(make_cfg(), "/etc/systemd/system/mailcfg-agent.service")
    for line in (
        # The venv apply installed, by absolute path.
        f"ExecStart={AGENT_HOME}/current/bin/mailcfg-agent serve --config /etc/mailcfg/agent.json",
        "User=mailcfg-agent",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "RuntimeDirectory=mailcfg",
        "StateDirectory=mailcfg/agent",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ):
        assert f"\n{line}\n" in unit


def test_activations_are_formatted_from_resolved_paths() -> None:
    cfg = make_cfg(paths={"postfix_config_dir": "/srv/pf"})
    acts = {a.role: a for a in make_activations(cfg, ROLES, ["postfix", "dovecot"])}
    assert set(acts) == {"postfix", "dovecot"}
    pf = acts["postfix"]
    assert pf.action == "reload"
    postmap = "postmap -c '{stage}/srv/pf' 'hash:{stage}/srv/pf/virtual_alias_maps'"
    assert any(c.startswith(postmap + " ") for c in pf.build)
    assert any("postfix -c '{stage}/srv/pf' check" in c for c in pf.validate)
    assert pf.apply == (
        "if postfix -c /srv/pf status 2>/dev/null; then postfix -c /srv/pf reload; fi",
    )
    doveconf = "doveconf -c '{stage}/etc/dovecot/dovecot.conf' -x -n"
    assert any(doveconf in c for c in acts["dovecot"].validate)


def test_verify_probes_every_smtp_listener_and_asks_the_agent() -> None:
    cfg = make_cfg(listeners={"submission_alt": {"enabled": False, "port": 2525}})
    acts = {a.role: a for a in make_activations(cfg, ROLES, ["postfix", "agent"])}
    (probe,) = acts["postfix"].verify
    # 25 and 587 (2525 is off): a submission-only smtpd setting is read only on its port.
    assert probe.endswith("127.0.0.1 25 127.0.0.1 587 ; fi")
    (ping,) = acts["agent"].verify
    assert '"$agent" ping --config /etc/mailcfg/agent.json --wait 10' in ping
    assert "agent=/opt/mailcfg/agent/current/bin/mailcfg-agent;" in ping
    assert "[ -S /run/mailcfg/policy.sock ]" in ping


def test_unknown_role_is_a_clear_error() -> None:
    with pytest.raises(RoleError, match="role 'nope' not found"):
        make_activations(make_cfg(), ROLES, ["nope"])


def test_malformed_role_yml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "x/templates").mkdir(parents=True)
    (tmp_path / "x/role.yml").write_text("service: x\nfiles: [{template: a.j2}]\n")
    with pytest.raises(RoleError, match=r"x/role\.yml: files\[0\]: expected a mapping"):
        load_roles(tmp_path)
    (tmp_path / "x/role.yml").write_text("service: x\nbogus: 1\n")
    with pytest.raises(RoleError, match=r"unknown keys \['bogus'\]"):
        load_roles(tmp_path)


def test_undefined_template_variable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x/templates").mkdir(parents=True)
    (tmp_path / "x/templates/a.j2").write_text("{{ no_such_thing }}\n")
    (tmp_path / "x/role.yml").write_text("files: [{template: a.j2, path: /etc/a}]\n")
    roles = load_roles(tmp_path)
    cfg = make_cfg()
    cfg = cfg.model_copy(update={"spec": cfg.spec.model_copy(update={"roles": ["x"]})})
    with pytest.raises(RoleError, match=r"x/templates/a\.j2: 'no_such_thing' is undefined"):
        render_host(cfg, roles)


def test_autoresponder_renders_one_sieve_script_per_account() -> None:
    spec = HostSpec(address="192.0.2.1", hostname="mx.example.com")
    away = Autoresponder(subject="Away", body='Back "soon".')
    dom = Domain(
        domain="example.com",
        accounts=[
            Account(name="a", password=H, autoresponder=away),
            Account(name="b", password=H, autoresponder=away.model_copy(update={"enabled": False})),
            Account(name="c", password=H),
        ],
    )
    inv = Inventory(hosts={"mx": spec}, domains={"example.com": dom})
    tree = render_host(resolve_host(inv, "mx", role_defaults(ROLES)), ROLES)
    scripts = [p for p in tree if p.startswith("/etc/dovecot/autoreply/")]
    assert scripts == ["/etc/dovecot/autoreply/a@example.com.sieve"]
    script = tree[scripts[0]]
    assert script.role == "dovecot" and script.mode == 0o644
    assert b'"Back \\"soon\\"."' in script.content
    conf = tree["/etc/dovecot/dovecot.conf"].content.decode()
    assert "sieve_before = file:/etc/dovecot/autoreply/%u.sieve;bindir=~/.sieve-bin" in conf
