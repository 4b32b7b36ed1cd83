"""What the rspamd e2e tests share: Debian's rspamd started on the role's rendered config
directory (and restarted on one re-rendered file), test messages, test-only main.cf settings,
waiting on a condition with the daemons' log tails, and dkimpy's TXT lookups on the loopback
DNS server. Each test module keeps its own ports, inventory and lab fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
from mailhost import MailHost, listening_ports, stop_child

from compiler.render.context import make_base_context
from compiler.render.resolve import HostConfig
from compiler.render.roles import default_roles_dir, load_roles, make_activations

READY = 90.0


def wait_for(
    condition: Callable[[], object], what: str, logs: list[Path], timeout: float = READY
) -> None:
    """Poll `condition`; on timeout fail with the tails of `logs`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists()
            )
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.2)


def run_role_builds(mh: MailHost, role_names: list[str]) -> None:
    """The roles' `build` commands (DKIM keys, the SRS secret), as the on-host program runs
    them on "/". The commands are the repository's roles', their values quoted there."""
    roles = load_roles(default_roles_dir())
    for activation in make_activations(mh.cfg, roles, role_names):
        for command in activation.build:
            subprocess.run(
                command.replace("{stage}", ""),
                shell=True,
                check=True,
                env=dict(os.environ, MAILCFG_ROOT="/"),
                capture_output=True,
            )


def start_rspamd(base: Path, confdir: Path) -> subprocess.Popen[bytes]:
    """Debian's rspamd.conf with the role's local.d and override.d (LOCAL_CONFDIR)."""
    for d in ("lib/rspamd", "run/rspamd", "log/rspamd"):
        (base / d).mkdir(parents=True, exist_ok=True)
        shutil.chown(base / d, "_rspamd", "_rspamd")
    out = open(base / "log/rspamd.out", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        ["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", "/etc/rspamd/rspamd.conf",
         f"--var=LOCAL_CONFDIR={confdir}", f"--var=DBDIR={base / 'lib/rspamd'}",
         f"--var=RUNDIR={base / 'run/rspamd'}", f"--var=LOGDIR={base / 'log/rspamd'}"],
        stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out.close()
    return proc


def rerender_rspamd(
    cfg: HostConfig,
    procs: list[subprocess.Popen[bytes]],
    base: Path,
    update: Mapping[str, Any],
    local_file: str,
) -> HostConfig:
    """The rspamd role's `local.d/<local_file>` rendered for `cfg` with its policy updated by
    `update`, installed, and rspamd (the last of `procs`) restarted on it; returns that cfg."""
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update=dict(update))})
    roles = load_roles(default_roles_dir())
    text = roles.env.get_template(f"rspamd/{local_file}.j2").render(make_base_context(cfg))
    confdir = Path(cfg.policy.paths.rspamd_config_dir)
    (confdir / "local.d" / local_file).write_text(text)
    proxy = cfg.policy.filter_ports.rspamd_proxy
    stop_child(procs.pop())
    wait_for(lambda: proxy not in listening_ports("127.0.0.1"), "rspamd to stop", [])
    procs.append(start_rspamd(base, confdir))
    wait_for(
        lambda: proxy in listening_ports("127.0.0.1"),
        "rspamd after the restart",
        [base / "log/rspamd/rspamd.log"],
    )
    return cfg


def message(sender: str, to: str, subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@test>"
    msg["Date"] = "Mon, 07 Dec 2026 12:00:00 +0000"
    msg.set_content(body.decode())
    return msg.as_bytes().replace(b"\n", b"\r\n")


def postconf(mh: MailHost, *settings: str) -> None:
    """Test-only main.cf settings (the sink as relayhost, XCLIENT), then a reload."""
    subprocess.run(["postconf", "-c", str(mh.postfix_config_dir), "-e", *settings], check=True)
    subprocess.run(["postfix", "-c", str(mh.postfix_config_dir), "reload"], check=True,
                   capture_output=True)  # fmt: skip


def txt_lookup(port: int) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc: the TXT record of a name from the loopback DNS server at `port`."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
        answer = dns.query.tcp(query, "127.0.0.1", port=port, timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)  # type: ignore[attr-defined]
        return None

    return lookup
