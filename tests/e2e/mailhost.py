"""Boot a real Postfix + Dovecot from a host's rendered tree, on loopback, for tests.

Shared harness (other engineers' e2e tests use it). As root, with Debian's postfix and dovecot.

API
---
`boot_mailhost(inv, host, base, port_base, **options)` is a context manager yielding a
`MailHost`; on exit it stops Dovecot and Postfix (and the agent, if started) by PID:

    from mailhost import boot_mailhost   # tests/e2e is on sys.path under pytest

    with boot_mailhost(inv, "mx1", None, 20100) as mh:
        smtplib.SMTP(mh.address, mh.ports["smtp"])
        mh.wait_for_messages("alice@example.com", 1)

`base=None` (recommended) makes a fresh `/tmp/mailcfg-e2e-*` directory, removed on exit
unless MAILCFG_KEEP_E2E=1. Do not pass pytest's `tmp_path`: every pytest session start resets
`/tmp/pytest-of-root` to mode 0700, and with parallel sessions that locks Postfix (data
directory) and Dovecot's vmail deliveries out of a running host.

What it does, in order:
1. `prepare_inventory` rewrites the host's policy (host layer, so it wins over groups):
   every path under `base` (config, queue, data, mail root, logs, agent socket/state, unit
   dir), each listener on `address` at `port_base + offset` (`PORT_OFFSETS`: smtp +25,
   submission +87, submission_alt +52, smtps +65, imap +43, imaps +93, pop3 +10, pop3s +95,
   lmtp +24, so pick `port_base` with room for +95 inside your port range), TLS from a fresh
   self-signed certificate (`make_self_signed_cert`), vmail uid/gid of the `vmail` user
   (created with useradd if missing: `ensure_vmail_user`), `trusted_networks` = the server's
   own address only (so clients on other 127.x addresses are really "outside"; Dovecot also
   treats only same-IP clients as secured), `reject_unknown_sender_domain: false` (no DNS in
   tests), then `policy` (your overrides, a partial ServerPolicy mapping) last.
   `roles` replaces the host's roles (default: postfix + dovecot, no agent, so no policy hook
   is rendered; pass `roles=("postfix", "dovecot", "agent")` to get the hook).
2. resolves and renders the host with the repository's roles, writes the tree (mode, owner,
   group), runs postmap on the maps, and makes every ancestor of `base` traversable (o+x)
   because Dovecot delivers as the unprivileged vmail user.
3. starts the agent if `start_agent=True` (`mailcfg-agent serve --config ...`, output in
   `base/log/agent.out`) and waits for its socket; starts Postfix (`postfix -c DIR start`),
   then Dovecot in the foreground as a child (`dovecot -F -c FILE`, output in
   `base/log/dovecot.out`), and waits until every enabled TCP listener shows up in
   /proc/net/tcp (never by connecting: that would add log lines) and Dovecot's sockets exist.

`MailHost` gives the resolved `cfg`, rendered `tree`, `address`, `ports` (name → port, enabled
listeners only), the paths (`postfix_config_dir`, `dovecot_conf`, `maillog`, `dovecot_log`,
`mail_root`, `agent_config`, `agent_socket`, `cert`), and helpers: `messages(address)` (the
delivered messages of an account, bytes, oldest first), `wait_for_messages(address, n)`,
`wait_for_log(text)`, `postqueue()` (the `postqueue -j` entries) and `flush_queue()`.
Errors while booting raise `MailHostError` with the relevant log tail.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.load.layers import merge_layers
from compiler.render.render import render_host
from compiler.render.resolve import HostConfig, resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults
from compiler.types import FileTree
from schemas.inventory import Inventory

PORT_OFFSETS: Mapping[str, int] = {
    "smtp": 25,
    "submission": 87,
    "submission_alt": 52,
    "smtps": 65,
    "imap": 43,
    "imaps": 93,
    "pop3": 10,
    "pop3s": 95,
    "lmtp": 24,
}
BOOT_TIMEOUT = 30.0


class MailHostError(Exception):
    """The mail host could not be booted; the message carries the relevant log tail."""


def ensure_vmail_user(name: str = "vmail") -> tuple[int, int]:
    """uid/gid of `name`, creating it as a system user if missing (idempotent, race-safe:
    a concurrent useradd of the same name is fine)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--home-dir", "/nonexistent",
             "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, check=False,
        )  # fmt: skip
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def make_self_signed_cert(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A throwaway EC certificate for `hostname` (cert, key), key mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={hostname}",
         "-addext", f"subjectAltName=DNS:{hostname}",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def listening_ports(address: str) -> set[int]:
    """TCP ports in LISTEN state on `address` (or on the wildcard), from /proc/net/tcp."""
    wanted = {socket.inet_aton(address)[::-1].hex().upper(), "00000000"}
    ports: set[int] = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            ip, port = local.split(":")
            if state == "0A" and ip in wanted:
                ports.add(int(port, 16))
    return ports


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not readable)"


def _wait(condition: Any, what: str, logs: Sequence[Path], timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{_tail(p)}" for p in logs)
            raise MailHostError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def make_traversable(path: Path) -> None:
    """Add o+x to `path` and its ancestors so unprivileged daemons can reach below it."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & 0o001:
            p.chmod(mode | 0o001)


@dataclass(frozen=True)
class Layout:
    """Where a test host lives: everything under `base`, listeners on `address`."""

    base: Path
    address: str
    port_base: int

    def ports(self) -> dict[str, int]:
        return {name: self.port_base + off for name, off in PORT_OFFSETS.items()}

    def policy(self, cert: Path, key: Path, uid: int, gid: int) -> dict[str, Any]:
        b = self.base
        return {
            "trusted_networks": [f"{self.address}/32"],
            "reject_unknown_sender_domain": False,
            "listeners": {
                name: {"port": port, "address": self.address} for name, port in self.ports().items()
            },
            "tls": {"cert": str(cert), "key": str(key)},
            "paths": host_paths(b, uid, gid),
            "policy_state": f"sqlite://{b / 'lib/agent/state.db'}",
        }


def host_paths(base: Path, uid: int, gid: int) -> dict[str, Any]:
    """Every `Paths` entry of a test host under its own `base` (policy.paths override)."""
    return {
        "postfix_config_dir": str(base / "etc/postfix"),
        "postfix_queue_dir": str(base / "spool/postfix"),
        "postfix_data_dir": str(base / "lib/postfix"),
        "dovecot_config_dir": str(base / "etc/dovecot"),
        "dovecot_base_dir": str(base / "run/dovecot"),
        "mail_root": str(base / "vmail"),
        "vmail_uid": uid,
        "vmail_gid": gid,
        "agent_config_dir": str(base / "etc/mailcfg"),
        "agent_state_dir": str(base / "lib/agent"),
        "agent_socket": str(base / "run/mailcfg/policy.sock"),
        "maillog_file": str(base / "log/mail.log"),
        "mail_log": str(base / "log/mail.log"),
        "dovecot_log": str(base / "log/dovecot.log"),
        "systemd_unit_dir": str(base / "etc/systemd/system"),
    }


def prepare_inventory(
    inv: Inventory,
    host: str,
    layout: Layout,
    cert: Path,
    key: Path,
    *,
    roles: Sequence[str] | None = ("postfix", "dovecot"),
    policy: Mapping[str, Any] | None = None,
) -> Inventory:
    """`inv` with `host` moved into `layout` (see the module docstring)."""
    uid, gid = ensure_vmail_user()
    spec = inv.hosts[host]
    host_policy = merge_layers(spec.policy, layout.policy(cert, key, uid, gid), policy or {})
    update: dict[str, Any] = {"policy": host_policy}
    if roles is not None:
        update["roles"] = list(roles)
    new_spec = spec.model_copy(update=update)
    return inv.model_copy(update={"hosts": {**inv.hosts, host: new_spec}})


def write_tree(tree: FileTree, base: Path) -> None:
    """Write every rendered file (all must lie under `base`) with its mode and owner."""
    for path in tree:
        f = tree[path]
        target = Path(path)
        if base != target and base not in target.parents:
            raise MailHostError(f"{path} is outside the test host's base {base}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.content)
        target.chmod(f.mode)
        shutil.chown(target, f.owner, f.group)


@dataclass
class MailHost:
    """A booted test host. Paths are absolute on this machine."""

    name: str
    cfg: HostConfig
    tree: FileTree
    address: str
    ports: dict[str, int]
    base: Path
    cert: Path
    dovecot_proc: subprocess.Popen[bytes] | None = None
    agent_proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> Any:
        return self.cfg.policy.paths

    @property
    def postfix_config_dir(self) -> Path:
        return Path(self.paths.postfix_config_dir)

    @property
    def dovecot_conf(self) -> Path:
        return Path(self.paths.dovecot_config_dir) / "dovecot.conf"

    @property
    def maillog(self) -> Path:
        return Path(self.paths.maillog_file)

    @property
    def dovecot_log(self) -> Path:
        return Path(self.paths.dovecot_log)

    @property
    def mail_root(self) -> Path:
        return Path(self.paths.mail_root)

    @property
    def agent_config(self) -> Path:
        return Path(self.paths.agent_config_dir) / "agent.json"

    @property
    def agent_socket(self) -> Path:
        return Path(self.paths.agent_socket)

    @property
    def logs(self) -> list[Path]:
        return [self.maillog, self.dovecot_log, self.base / "log/dovecot.out"]

    def maildir(self, address: str) -> Path:
        local, domain = address.lower().split("@")
        return self.mail_root / domain / local / "Maildir"

    def messages(self, address: str) -> list[bytes]:
        """Delivered messages of an account's INBOX (new and cur), oldest first."""
        found: list[Path] = []
        for sub in ("new", "cur"):
            d = self.maildir(address) / sub
            if d.is_dir():
                found.extend(p for p in d.iterdir() if p.is_file())
        found.sort(key=lambda p: (p.stat().st_mtime, p.name))
        return [p.read_bytes() for p in found]

    def wait_for_messages(self, address: str, count: int, timeout: float = 20.0) -> list[bytes]:
        """Wait until `address` has at least `count` messages; MailHostError otherwise."""
        _wait(
            lambda: len(self.messages(address)) >= count,
            f"{count} message(s) for {address}",
            self.logs,
            timeout,
        )
        return self.messages(address)

    def wait_for_log(self, text: str, log: Path | None = None, timeout: float = 20.0) -> str:
        """Wait until `text` appears in the Postfix log (or `log`); returns the first line."""
        path = log or self.maillog

        def found() -> bool:
            return path.exists() and text in path.read_text(errors="replace")

        _wait(found, f"{text!r} in {path}", [path], timeout)
        return next(line for line in path.read_text().splitlines() if text in line)

    def postqueue(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            ["postqueue", "-c", str(self.postfix_config_dir), "-j"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush_queue(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.postfix_config_dir), "-f"], check=True)


def _postfix(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["postfix", "-c", str(config_dir), *args], capture_output=True, text=True, check=False
    )


def _stop_postfix(config_dir: Path, queue_dir: Path) -> None:
    pid_file = queue_dir / "pid/master.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    _postfix(config_dir, "stop")
    if pid is not None:
        _wait(lambda: not _pid_alive(pid), f"postfix master {pid} to exit", [], 30)


def stop_child(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a child we started, by its PID: SIGTERM, then SIGKILL after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _temporary_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="mailcfg-e2e-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        if os.environ.get("MAILCFG_KEEP_E2E") != "1":
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def boot_mailhost(
    inv: Inventory,
    host: str,
    base: Path | None,
    port_base: int,
    *,
    address: str = "127.0.0.1",
    roles: Sequence[str] | None = ("postfix", "dovecot"),
    policy: Mapping[str, Any] | None = None,
    start_agent: bool = False,
) -> Iterator[MailHost]:
    """Render `host` of `inv` into `base`, start its services, yield a `MailHost`, stop them."""
    if base is None:
        with _temporary_base() as tmp, boot_mailhost(
            inv, host, tmp, port_base, address=address, roles=roles, policy=policy,
            start_agent=start_agent,
        ) as mh:  # fmt: skip
            yield mh
        return
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    layout = Layout(base, address, port_base)
    cert, key = make_self_signed_cert(base / "tls", inv.hosts[host].hostname)
    prepared = prepare_inventory(inv, host, layout, cert, key, roles=roles, policy=policy)
    roles_ = load_roles(default_roles_dir())
    cfg = resolve_host(prepared, host, role_defaults(roles_))
    tree = render_host(cfg, roles_)
    paths = cfg.policy.paths

    for d in ("log", "run/mailcfg", "lib/agent", "spool/postfix"):
        (base / d).mkdir(parents=True, exist_ok=True)
    data_dir = Path(paths.postfix_data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(data_dir, "postfix", "postfix")
    mail_root = Path(paths.mail_root)
    mail_root.mkdir(parents=True, exist_ok=True)
    shutil.chown(mail_root, paths.vmail_uid, paths.vmail_gid)
    Path(paths.dovecot_base_dir).mkdir(parents=True, exist_ok=True)
    make_traversable(base)
    write_tree(tree, base)
    config_dir = Path(paths.postfix_config_dir)
    if "postfix" in cfg.spec.roles:
        for name in ("virtual_mailbox_domains", "virtual_mailbox_maps", "virtual_alias_maps",
                     "sender_login_maps"):  # fmt: skip
            subprocess.run(
                ["postmap", "-c", str(config_dir), f"hash:{config_dir / name}"], check=True
            )

    mh = MailHost(
        name=host,
        cfg=cfg,
        tree=tree,
        address=address,
        ports={
            n: getattr(cfg.policy.listeners, n).port
            for n in PORT_OFFSETS
            if getattr(cfg.policy.listeners, n).enabled
        },
        base=base,
        cert=cert,
    )
    postfix_started = False
    try:
        if start_agent:
            out = open(base / "log/agent.out", "ab")  # noqa: SIM115 - owned by the child
            mh.agent_proc = subprocess.Popen(
                [sys.executable, "-m", "runtime", "serve", "--config", str(mh.agent_config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            out.close()
            _wait(mh.agent_socket.exists, "the agent's policy socket", [base / "log/agent.out"])
        if "postfix" in cfg.spec.roles:
            res = _postfix(config_dir, "start")
            if res.returncode != 0:
                raise MailHostError(
                    f"postfix start failed:\n{res.stdout}{res.stderr}\n{_tail(mh.maillog)}"
                )
            postfix_started = True
        if "dovecot" in cfg.spec.roles:
            out = open(base / "log/dovecot.out", "ab")  # noqa: SIM115 - owned by the child
            mh.dovecot_proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(mh.dovecot_conf)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            out.close()
            queue = Path(paths.postfix_queue_dir)
            _wait(
                lambda: (
                    (queue / "private/auth").exists() and (queue / "private/dovecot-lmtp").exists()
                ),
                "Dovecot's auth and LMTP sockets",
                mh.logs,
            )
        wanted = {
            p
            for n, p in mh.ports.items()
            if ("postfix" in cfg.spec.roles and n in ("smtp", "submission", "submission_alt",
                                                       "smtps"))
            or ("dovecot" in cfg.spec.roles and n not in ("smtp", "submission",
                                                          "submission_alt", "smtps"))
        }  # fmt: skip
        _wait(lambda: wanted <= listening_ports(address), f"listeners {sorted(wanted)}", mh.logs)
        yield mh
    finally:
        stop_child(mh.dovecot_proc)
        if postfix_started:
            _stop_postfix(config_dir, Path(paths.postfix_queue_dir))
        stop_child(mh.agent_proc)
