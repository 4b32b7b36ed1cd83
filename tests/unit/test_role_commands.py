"""Role commands (roles/*/role.yml) are shell text run as root: every value they interpolate
(paths, listener hosts and ports) is one shell word, however hostile, and a command
substitution in a value never runs, also after the on-host script replaces `{stage}`."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from compiler.push.hostside import hostroot, runner
from compiler.render.context import make_base_context
from compiler.render.resolve import HostConfig, resolve_host
from compiler.render.roles import (
    RoleError,
    default_roles_dir,
    load_roles,
    make_activation,
    make_activations,
    role_defaults,
)
from compiler.types import Activation
from schemas.domain import Account, Domain
from schemas.inventory import HostSpec, Inventory

ROLES = load_roles(default_roles_dir())
HASH = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"
STEPS = ("build", "validate", "apply", "verify")
# Every path a role command interpolates (directly or through agent_config_path).
PATH_FIELDS = (
    "postfix_config_dir",
    "dovecot_config_dir",
    "dovecot_base_dir",
    "agent_config_dir",
    "agent_socket",
    "mail_log",
    "maillog_file",
)
# Shell syntax of every kind: word splitting, command substitution, quoting, globbing,
# comments, control operators, redirection, expansion, history, brace expansion.
HOSTILE = " ;$(touch X)`touch X`'\"*?[a]~#&&|<>!{a,b}\\ $HOME ${IFS}x"


def make_cfg(**policy: object) -> HostConfig:
    spec = HostSpec(address="192.0.2.1", hostname="mx.example.com", policy=policy)
    domain = Domain(domain="example.com", accounts=[Account(name="a", password=HASH)])
    inv = Inventory(hosts={"mx": spec}, domains={"example.com": domain})
    return resolve_host(inv, "mx", role_defaults(ROLES))


def activations(context: Mapping[str, Any]) -> list[Activation]:
    return [make_activation(ROLES, ROLES[name], context) for name in sorted(ROLES.roles)]


def split_words(command: str) -> list[str]:
    """`shlex.split`, with the shell's operators (`;`, `&&`, `|`, `>`...) as words of their own."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def words(acts: list[Activation], stage: str) -> list[list[str]]:
    """Each command as the shell splits it, `{stage}` replaced as the on-host script does."""
    return [
        split_words(command.replace("{stage}", stage))
        for act in acts
        for step in STEPS
        for command in getattr(act, step)
    ]


def context_with(cfg: HostConfig, value: Callable[[str], str]) -> dict[str, Any]:
    """The command context of `cfg` with every interpolated value replaced by `value(name)`,
    put in directly: no schema check on the way."""
    context = make_base_context(cfg)
    paths = cfg.policy.paths.model_copy(update={f: value(f"/{f}") for f in PATH_FIELDS})
    context["paths"] = paths
    context["agent_config_path"] = value("/agent_config_path")
    context["smtp_probes"] = [(value("smtp-host"), value("25")), (value("sub-host"), value("587"))]
    context["imap_probe"] = (value("imap-host"), value("143"))
    return context


def test_each_schema_valid_value_is_one_word() -> None:
    """Paths and listener addresses that look like options or odd names, as the schema lets
    them through, land in the command each as one word (with its `{stage}` prefix, if any)."""
    cfg = make_cfg(
        paths={
            "postfix_config_dir": "/srv/-n/p+x",
            "dovecot_config_dir": "/srv/.d/--help",
            "dovecot_base_dir": "/run/-rf",
            "agent_config_dir": "/etc/-c..x",
            "agent_socket": "/run/-x/s.sock",
            "mail_log": "/var/log/-f",
        },
        listeners={"smtp": {"port": 2525, "address": "::1"}, "imap": {"port": 1143}},
    )
    acts = make_activations(cfg, ROLES, sorted(ROLES.roles))
    split = words(acts, "/stage")
    flat = [word for command in split for word in command]
    for expected in (
        "/stage/srv/-n/p+x",
        "hash:/stage/srv/-n/p+x/virtual_alias_maps",
        "/srv/-n/p+x",
        "/stage/srv/.d/--help/dovecot.conf",
        "/stage/srv/.d/--help/users",
        "/run/-rf/master.pid",
        "/stage/etc/-c..x/agent.json",
        "/etc/-c..x/agent.json",
        "/run/-x/s.sock",
        "/var/log/-f",
        "::1",
        "2525",
        "1143",
    ):
        assert expected in flat, expected
    postfix_c = [c[c.index("-c") + 1] for c in split if c[0] in ("postfix", "postmap", "postconf")]
    assert set(postfix_c) == {"/stage/srv/-n/p+x"}


def test_each_hostile_value_is_one_word() -> None:
    """With shell syntax of every kind in every value (bypassing the schema), the commands
    split into exactly the words they have with plain values."""
    cfg = make_cfg()
    plain = words(activations(context_with(cfg, lambda v: v)), "/stage dir")
    hostile = words(activations(context_with(cfg, lambda v: v + HOSTILE)), "/stage dir")
    assert len(hostile) == len(plain) > 10
    assert [[w.replace(HOSTILE, "") for w in c] for c in hostile] == plain
    # Every value made it into some command.
    used = {w for c in hostile for w in c if HOSTILE in w}
    assert len(used) >= len(PATH_FIELDS)


@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "\u2028"])
def test_a_value_with_a_line_break_is_refused(bad: str) -> None:
    """A rendered command entry is split into one command per line: a quoted newline would
    start a command of its own, so `shq` refuses it."""
    cfg = make_cfg()
    context = context_with(cfg, lambda v: v)
    context["smtp_probes"] = [(f"127.0.0.1{bad}touch X #", "25")]
    with pytest.raises(RoleError, match="line break or NUL"):
        make_activation(ROLES, ROLES["postfix"], context)


STUB = """#!/usr/bin/python3 -I
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""
# Every program the role commands call: stubs that record their arguments and succeed.
PROGRAMS = (
    "awk", "cat", "doveadm", "doveconf", "getent", "mailcfg-agent", "postconf", "postfix",
    "postmap", "python3", "systemctl", "tail", "touch", "useradd",
)  # fmt: skip


def run_for_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acts: list[Activation]
) -> list[list[str]]:
    """Run every command of `acts` through the on-host script's own runner (/bin/sh, `{stage}`
    replaced), with only recording stubs on PATH; return the calls the stubs saw."""
    bin_dir, root, stage = tmp_path / "bin", tmp_path / "root", tmp_path / "root/stage"
    bin_dir.mkdir()
    stage.mkdir(parents=True)
    for name in PROGRAMS:
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.touch()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("STUB_LOG", str(log))
    host = hostroot.Host(str(root), "auto")
    warnings: list[str] = []
    for act in acts:
        for step in STEPS:
            staged = str(stage) if step in ("build", "validate") else None
            runner.run_commands(host, step, list(getattr(act, step)), staged, warnings)
    assert warnings == []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_command_substitution_in_a_value_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = [tmp_path / f"pwned{i}" for i in range(3)]
    payload = (
        f"$(/usr/bin/touch {marks[0]})`/usr/bin/touch {marks[1]}`;/usr/bin/touch {marks[2]};"
        "$(touch X)"
    )
    cfg = make_cfg()
    calls = run_for_real(
        tmp_path, monkeypatch, activations(context_with(cfg, lambda v: v + payload))
    )
    assert [m for m in marks if m.exists()] == []
    assert [c for c in calls if c[0] == "touch"] == []
    # The programs did run, each hostile value arriving as one argument.
    conf = "/postfix_config_dir" + payload
    assert ["postfix", "-c", conf, "status"] in calls
    assert ["postfix", "-c", f"{tmp_path}/root/stage{conf}", "check"] in calls
    if Path("/run/systemd/system").is_dir():  # the agent's verify pings only under systemd
        agent_config = "/agent_config_path" + payload
        assert ["mailcfg-agent", "ping", "--config", agent_config, "--wait", "10"] in calls
    probe = next(c for c in calls if c[:4] == ["python3", "-I", "-S", "-c"])
    assert probe[5:] == [
        "smtp-host" + payload,
        "25" + payload,
        "sub-host" + payload,
        "587" + payload,
    ]


def test_the_runner_would_show_an_unquoted_substitution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harness above can see an injection: an unquoted value does run."""
    mark = tmp_path / "pwned"
    act = Activation("t", "t", "none", build=(f"postmap -c {{stage}}/x$(/usr/bin/touch {mark})",))
    run_for_real(tmp_path, monkeypatch, [act])
    assert mark.exists()
