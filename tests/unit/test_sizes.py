"""One size type for every size of the inventory (issue 11.4): a quota and the message size
limit take the same forms, and what reaches Postfix and Dovecot is bytes."""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from pydantic import ValidationError

from compiler.cli import main
from schemas.domain import Account
from schemas.policy import ServerPolicy

BLF = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
BASE = Path(__file__).parent / "bad_inventories" / "_base"
M45 = 45 * 1024**2


@pytest.mark.parametrize("written", ["45M", "45m", "45 MB", " 45M ", "46080K", str(M45), M45])
def test_quota_and_message_size_limit_take_the_same_forms(written: object) -> None:
    assert Account(name="a", password=BLF, quota=written).quota == M45  # type: ignore[arg-type]
    policy = ServerPolicy(message_size_limit=written)  # type: ignore[arg-type]
    assert policy.message_size_limit == M45


ARABIC_INDIC_45M = "\u0664\u0665M"  # int() would read these digits; a size does not


@pytest.mark.parametrize("written", ["45X", "1.5G", "-1", "45MiB", ARABIC_INDIC_45M])
def test_quota_and_message_size_limit_refuse_the_same_forms(written: str) -> None:
    for make in (
        lambda: Account(name="a", password=BLF, quota=written),  # type: ignore[arg-type]
        lambda: ServerPolicy(message_size_limit=written),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValidationError, match="is not a size"):
            make()


def test_message_size_limit_keeps_its_lower_bound_with_a_unit() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1000"):
        ServerPolicy(message_size_limit="0K")  # type: ignore[arg-type]
    assert ServerPolicy(message_size_limit="1K").message_size_limit == 1024  # type: ignore[arg-type]


def test_rendered_sizes_are_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv = tmp_path / "inv"
    shutil.copytree(BASE, inv)
    main_file = inv / "mailcfg.yml"
    main_file.write_text(main_file.read_text() + "  message_size_limit: 45M\n")
    monkeypatch.chdir(inv)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["render", ".", "--out", str(tmp_path / "out")])
    assert code == 0, err.getvalue()
    main_cf = (tmp_path / "out" / "mx1" / "etc" / "postfix" / "main.cf").read_text()
    assert f"\nmessage_size_limit = {M45}\n" in main_cf
    users = (tmp_path / "out" / "mx1" / "etc" / "dovecot" / "users").read_text()
    assert f"userdb_quota_rule=*:storage={1024**3}B" in users  # alice's `quota: 1G`
