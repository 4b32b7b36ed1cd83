"""SshTransport against real sshd servers in network namespaces: commands, files, host-key
checking (strict, changed key, trust on first use), sudo, connection reuse and failures."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import NetnsHost, NetnsLab, run_cmd, wait_until

from compiler.connectors.ssh import SshTransport
from compiler.connectors.transport import TransportError
from schemas.inventory import HostSpec

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, sshd)")
    with NetnsLab() as lab:
        yield lab


@pytest.fixture(scope="module")
def host(lab: NetnsLab) -> NetnsHost:
    return lab.add_host()


def make_spec(lab: NetnsLab, host: NetnsHost, **ssh: Any) -> HostSpec:
    settings: dict[str, Any] = {
        "identity_file": str(lab.identity_file),
        "known_hosts": str(lab.known_hosts),
        "connect_timeout": 2.0,
        "command_timeout": 20.0,
    }
    settings.update(ssh)
    return HostSpec(address=host.address, hostname="mx1.example.com", ssh=settings)


@pytest.fixture
def transport(lab: NetnsLab, host: NetnsHost) -> Iterator[SshTransport]:
    t = SshTransport("mx1", make_spec(lab, host))
    yield t
    t.close()


def ssh_keygen_fingerprint(public_key: Path) -> str:
    return run_cmd(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)]).split()[1]


# -- commands and files ----------------------------------------------------------------------


def test_run_returns_exit_code_and_output(transport: SshTransport) -> None:
    result = transport.run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert transport.run("true").ok


def test_run_uses_sh_and_runs_inside_the_host(transport: SshTransport, host: NetnsHost) -> None:
    result = transport.run('echo "$0"; ip -4 -o addr show dev eth0')
    assert result.stdout.splitlines()[0] == "sh"
    assert host.address in result.stdout


def test_run_keeps_quotes_and_special_characters(transport: SshTransport) -> None:
    result = transport.run("printf '%s|' \"a b\" 'it'\"'\"'s' '$HOME' \\;")
    assert result.stdout == "a b|it's|$HOME|;|"


def test_put_get_round_trip_binary_with_mode(transport: SshTransport, host: NetnsHost) -> None:
    target = host.root / "put" / "deep" / "secret.bin"
    content = bytes(range(256)) * 4096  # 1 MiB, every byte value
    transport.put(str(target), content, mode=0o640)
    assert target.read_bytes() == content
    assert target.stat().st_mode & 0o7777 == 0o640
    assert transport.get(str(target)) == content
    # Atomic: no temporary file is left beside the target.
    assert [p.name for p in target.parent.iterdir()] == ["secret.bin"]


def test_put_replaces_and_handles_large_and_empty_files(
    transport: SshTransport, host: NetnsHost
) -> None:
    target = host.root / "put" / "big.bin"
    big = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)  # beyond the SSH window
    transport.put(str(target), big)
    assert transport.get(str(target)) == big
    transport.put(str(target), b"")
    assert target.read_bytes() == b""
    assert transport.get(str(target)) == b""
    assert target.stat().st_mode & 0o7777 == 0o644


def test_put_to_a_path_with_spaces_and_quotes(transport: SshTransport, host: NetnsHost) -> None:
    target = host.root / "we ird" / "it's $x.txt"
    transport.put(str(target), b"ok\n")
    assert target.read_bytes() == b"ok\n"


def test_put_failure_is_an_os_error_naming_the_path(
    transport: SshTransport, host: NetnsHost
) -> None:
    blocker = host.root / "blocker"
    blocker.write_text("a file, not a directory")
    with pytest.raises(OSError, match=r"cannot write .*blocker/x"):
        transport.put(str(blocker / "x"), b"data")


def test_get_missing_file_raises_file_not_found(transport: SshTransport, host: NetnsHost) -> None:
    with pytest.raises(FileNotFoundError) as info:
        transport.get(str(host.root / "no-such-file"))
    assert info.value.filename == str(host.root / "no-such-file")


def test_one_connection_is_reused(lab: NetnsLab, host: NetnsHost) -> None:
    lab.kill_ssh_connections(host)
    lab.wait_ssh_connections(host, 0)
    with SshTransport("mx1", make_spec(lab, host)) as t:
        assert lab.ssh_connections(host) == []  # lazy: nothing before first use
        for i in range(5):
            t.run(f"echo {i}")
            t.put(str(host.root / "reuse.txt"), b"x")
            t.get(str(host.root / "reuse.txt"))
        assert len(lab.ssh_connections(host)) == 1
    lab.wait_ssh_connections(host, 0)


def test_command_timeout_raises_and_the_transport_stays_usable(
    lab: NetnsLab, host: NetnsHost
) -> None:
    with SshTransport("mx1", make_spec(lab, host, command_timeout=0.5)) as t:
        with pytest.raises(TransportError, match=r"timed out after 0.5s: sleep 30") as info:
            t.run("sleep 30")
        assert info.value.host == "mx1" and info.value.step == "run"
        assert t.run("echo again", timeout=10).stdout == "again\n"
        # An explicit timeout overrides the spec's.
        with pytest.raises(TransportError, match=r"timed out after 0\.2s"):
            t.run("sleep 30", timeout=0.2)


def test_connection_killed_mid_command_raises_then_reconnects(
    lab: NetnsLab, host: NetnsHost
) -> None:
    with SshTransport("mx1", make_spec(lab, host)) as t:
        t.run("true")
        errors: list[BaseException] = []

        def long_command() -> None:
            try:
                t.run("echo started; sleep 20")
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=long_command)
        worker.start()
        # Wait until the command runs on the host, then cut the connection.
        lab.run_in_host(host, "for i in $(seq 100); do pgrep -f '^sleep 20$' && exit 0; "
                        "sleep 0.05; done; exit 1")  # fmt: skip
        assert lab.kill_ssh_connections(host) == 1
        worker.join(timeout=30)
        assert len(errors) == 1 and isinstance(errors[0], TransportError)
        assert errors[0].step == "run"
        assert "connection lost" in str(errors[0])
        # The next call opens a fresh connection.
        assert t.run("echo back").stdout == "back\n"


def test_connection_killed_between_calls_reconnects(lab: NetnsLab, host: NetnsHost) -> None:
    with SshTransport("mx1", make_spec(lab, host)) as t:
        t.run("true")
        assert lab.kill_ssh_connections(host) == 1
        assert t.run("echo fresh").stdout == "fresh\n"
        assert len(lab.ssh_connections(host)) == 1


# -- host keys -------------------------------------------------------------------------------


def test_unknown_host_is_refused_naming_host_and_fingerprint(
    lab: NetnsLab, host: NetnsHost, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.touch()
    t = SshTransport("mx1", make_spec(lab, host, known_hosts=str(empty)))
    with pytest.raises(TransportError) as info:
        t.run("true")
    message = str(info.value)
    assert message.startswith("mx1: connect: host key unknown")
    assert host.address in message
    assert ssh_keygen_fingerprint(host.host_key.with_suffix(".pub")) in message
    assert "trust_on_first_use" in message
    assert empty.read_text() == ""  # nothing recorded


def test_missing_known_hosts_file_is_refused_too(
    lab: NetnsLab, host: NetnsHost, tmp_path: Path
) -> None:
    t = SshTransport("mx1", make_spec(lab, host, known_hosts=str(tmp_path / "absent_known_hosts")))
    with pytest.raises(TransportError, match="host key unknown"):
        t.run("true")
    assert not (tmp_path / "absent_known_hosts").exists()


def other_key_line(address: str, tmp_path: Path) -> str:
    key = tmp_path / "other_key"
    run_cmd(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return f"{address} {kind} {blob}\n"


def test_changed_host_key_is_refused(lab: NetnsLab, host: NetnsHost, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    original = other_key_line(host.address, tmp_path)
    known.write_text(original)
    for tofu in (False, True):  # trust on first use never accepts a changed key
        t = SshTransport(
            "mx1", make_spec(lab, host, known_hosts=str(known), trust_on_first_use=tofu)
        )
        with pytest.raises(TransportError) as info:
            t.run("true")
        message = str(info.value)
        assert "host key CHANGED" in message and host.address in message
        assert ssh_keygen_fingerprint(host.host_key.with_suffix(".pub")) in message
        assert ssh_keygen_fingerprint(tmp_path / "other_key.pub") in message
    assert known.read_text() == original  # never "fixed" automatically


def test_changed_key_of_another_type_is_refused(
    lab: NetnsLab, host: NetnsHost, tmp_path: Path
) -> None:
    rsa = tmp_path / "rsa_key"
    run_cmd(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)])
    kind, blob = rsa.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{host.address} {kind} {blob}\n")
    t = SshTransport("mx1", make_spec(lab, host, known_hosts=str(known), trust_on_first_use=True))
    with pytest.raises(TransportError, match="host key CHANGED"):
        t.run("true")


def test_hashed_known_hosts_entries_are_honoured(
    lab: NetnsLab, host: NetnsHost, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    public = host.host_key.with_suffix(".pub").read_text().split()
    known.write_text(f"{host.address} {public[0]} {public[1]}\n")
    run_cmd(["ssh-keygen", "-H", "-f", str(known)])
    assert host.address not in known.read_text()
    with SshTransport("mx1", make_spec(lab, host, known_hosts=str(known))) as t:
        assert t.run("echo ok").stdout == "ok\n"


def test_trust_on_first_use_records_the_key(lab: NetnsLab, host: NetnsHost, tmp_path: Path) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    with SshTransport(
        "mx1", make_spec(lab, host, known_hosts=str(known), trust_on_first_use=True)
    ) as t:
        assert t.run("echo first").stdout == "first\n"
    assert known.stat().st_mode & 0o777 == 0o600
    public = host.host_key.with_suffix(".pub").read_text().split()
    assert known.read_text().split() == [host.address, public[0], public[1]]
    # OpenSSH agrees with what was recorded.
    found = run_cmd(["ssh-keygen", "-F", host.address, "-f", str(known)])
    assert public[1] in found
    # Later connections are strict against the recorded key; nothing is added twice.
    with SshTransport("mx1", make_spec(lab, host, known_hosts=str(known))) as t:
        assert t.run("echo second").stdout == "second\n"
    assert len(known.read_text().splitlines()) == 1


def test_non_standard_port_uses_bracketed_known_hosts_name(lab: NetnsLab, tmp_path: Path) -> None:
    host = lab.add_host()
    try:
        lab.stop_sshd(host)
        host.ssh_port = 2222
        lab.start_sshd(host)
        known = tmp_path / "known_hosts"
        spec = make_spec(lab, host, known_hosts=str(known), port=2222, trust_on_first_use=True)
        with SshTransport("mx2", spec) as t:
            assert t.run("echo ok").stdout == "ok\n"
        assert known.read_text().split()[0] == f"[{host.address}]:2222"
    finally:
        lab.remove_host(host)


# -- authentication and sudo -----------------------------------------------------------------


def test_unknown_key_is_refused_without_trying_passwords(
    lab: NetnsLab, host: NetnsHost, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    run_cmd(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)])
    t = SshTransport("mx1", make_spec(lab, host, identity_file=str(stranger)))
    with pytest.raises(TransportError) as info:
        t.run("true")
    assert "authentication refused for root@" in str(info.value)
    assert str(stranger) in str(info.value)


def test_missing_identity_file_is_a_clear_error(
    lab: NetnsLab, host: NetnsHost, tmp_path: Path
) -> None:
    t = SshTransport("mx1", make_spec(lab, host, identity_file=str(tmp_path / "nokey")))
    with pytest.raises(TransportError, match=r"mx1: connect: .*nokey"):
        t.run("true")


@pytest.fixture
def sudo_user(lab: NetnsLab, host: NetnsHost) -> Iterator[str]:
    if not Path("/usr/bin/sudo").exists():
        pytest.fail("sudo is not installed (apt-get install sudo)")
    user = f"mcfgsudo{os.getpid() % 100000}"
    run_cmd(["useradd", "--create-home", "--shell", "/bin/sh", user])
    # "*": no password, but not locked ("!"), which sshd refuses even for key logins.
    run_cmd(["usermod", "--password", "*", user])
    sudoers = Path(f"/etc/sudoers.d/mcfg-test-{user}")
    try:
        lab.add_user(host, user)
        yield user
    finally:
        sudoers.unlink(missing_ok=True)
        # The user's sshd session may still be closing: end it, or userdel refuses.
        lab.kill_ssh_connections(host)
        wait_until(
            lambda: (
                subprocess.run(["userdel", "--remove", user], capture_output=True).returncode
                in (0, 6)
            ),  # 6: no such user (already gone)
            f"userdel {user}",
        )


def test_sudo_runs_commands_and_writes_files_as_root(
    lab: NetnsLab, host: NetnsHost, sudo_user: str
) -> None:
    sudoers = Path(f"/etc/sudoers.d/mcfg-test-{sudo_user}")
    sudoers.write_text(f"{sudo_user} ALL=(root) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    protected = host.root / "root-only"
    protected.mkdir(mode=0o700)
    with SshTransport("mx1", make_spec(lab, host, user=sudo_user, sudo=True)) as t:
        assert t.run("id -un").stdout == "root\n"
        assert t.run('echo "$0"').stdout == "sh\n"
        t.put(str(protected / "main.cf"), b"secret\n", mode=0o600)
        assert (protected / "main.cf").stat().st_uid == 0
        assert t.get(str(protected / "main.cf")) == b"secret\n"
    # Without sudo the same user cannot read it: proof the sudo path is what worked.
    with SshTransport("mx1", make_spec(lab, host, user=sudo_user)) as t:
        assert t.run("id -un").stdout == f"{sudo_user}\n"
        with pytest.raises(PermissionError):
            t.get(str(protected / "main.cf"))


def test_sudo_without_nopasswd_rule_fails_clearly_without_hanging(
    lab: NetnsLab, host: NetnsHost, sudo_user: str
) -> None:
    with (
        SshTransport("mx1", make_spec(lab, host, user=sudo_user, sudo=True)) as t,
        pytest.raises(TransportError) as info,
    ):
        t.run("true")
    assert info.value.step == "sudo"
    assert f"sudo -n refused for user {sudo_user}" in str(info.value)
    assert "NOPASSWD" in str(info.value)


# -- unreachable hosts -----------------------------------------------------------------------


def test_connection_refused_names_the_port(lab: NetnsLab, tmp_path: Path) -> None:
    host = lab.add_host()
    try:
        lab.stop_sshd(host)
        t = SshTransport("mx3", make_spec(lab, host))
        with pytest.raises(TransportError) as info:
            t.run("true")
        assert info.value.step == "connect"
        assert f"connection refused by root@{host.address}:22" in str(info.value)
    finally:
        lab.remove_host(host)


def test_host_down_fails_with_a_connect_timeout(lab: NetnsLab) -> None:
    host = lab.add_host()
    try:
        lab.stop_host(host)
        t = SshTransport("mx4", make_spec(lab, host, connect_timeout=1.0))
        with pytest.raises(TransportError) as info:
            t.run("true")
        message = str(info.value)
        assert message.startswith("mx4: connect: ")
        assert host.address in message
        assert "timed out after 1s" in message or "unreachable" in message
        # Back up: the same transport object connects on the next call.
        lab.start_host(host)
        assert t.run("echo up").stdout == "up\n"
        t.close()
    finally:
        lab.remove_host(host)
