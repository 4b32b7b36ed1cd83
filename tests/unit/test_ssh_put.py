"""The command an SSH `put` runs on the host, run here by `/bin/sh` with what a host's sshd
would feed it: a connection that drops mid-upload closes stdin early, and `cat` then ends
"successfully" with part of the data; what arrived must never replace the file."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from compiler.connectors.ssh import put_command

CONTENT = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB


def put(target: Path, stdin: bytes, content: bytes = CONTENT) -> subprocess.CompletedProcess[bytes]:
    command = put_command(str(target), content, 0o640)
    return subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True)


def test_a_whole_upload_is_renamed_into_place(tmp_path: Path) -> None:
    target = tmp_path / "new dir" / "it's.pyz"
    proc = put(target, CONTENT)
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == CONTENT and target.stat().st_mode & 0o777 == 0o640
    assert target.parent.stat().st_mode & 0o777 == 0o700  # a directory it made is private
    assert [p.name for p in target.parent.iterdir()] == ["it's.pyz"]


def test_an_upload_cut_short_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "onhost.pyz"
    target.write_bytes(b"the previous version\n")
    for cut in (b"", CONTENT[:1000], CONTENT[:-1]):
        proc = put(target, cut)
        assert proc.returncode != 0
        assert b"upload incomplete" in proc.stderr
        assert target.read_bytes() == b"the previous version\n"
        assert [p.name for p in tmp_path.iterdir()] == ["onhost.pyz"]  # no temp file left
    assert put(tmp_path / "absent", CONTENT[:10]).returncode != 0
    assert not (tmp_path / "absent").exists()


def test_an_empty_file_is_a_whole_upload(tmp_path: Path) -> None:
    assert put(tmp_path / "empty", b"", b"").returncode == 0
    assert (tmp_path / "empty").read_bytes() == b""
