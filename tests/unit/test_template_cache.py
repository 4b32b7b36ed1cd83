"""The roles' compiled templates kept across runs (`compiler.render.templatecache`): a second
load of the roles renders the same text without compiling anything; an edited template or
string is compiled again; a store file nobody with the user's key wrote (a plain pickle, or
one tagged under another key, as a checkout could hold) is never loaded."""

from __future__ import annotations

import marshal
import pickle
import shutil
from pathlib import Path
from typing import Any

import jinja2
import pytest
from ruamel.yaml import YAML

from compiler.cache.packstore import MAGIC
from compiler.render.roles import compile_snippet, default_roles_dir, load_roles
from compiler.render.templatecache import environment_fingerprint
from tests.forged_cache import Payload, forged_file

TEMPLATE = "dovecot/sieve.j2"
SNIPPET = "{{ paths.dovecot_config_dir }}/autoreply/{{ item.address }}.sieve"
VARIABLES = {"item": {"address": "a@example.org", "script": "keep;\n"}, "paths": {}}


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def render_both(roles_dir: Path, cache: Path) -> tuple[str, str]:
    roles = load_roles(roles_dir, cache)
    text = roles.env.get_template(TEMPLATE).render(VARIABLES)
    snippet = compile_snippet(roles, SNIPPET, "test").render(
        VARIABLES, paths={"dovecot_config_dir": "/etc/dovecot"}
    )
    roles.save_compiled()
    return text, snippet


def no_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a template was compiled although its code is cached")

    monkeypatch.setattr(jinja2.Environment, "compile", refuse)


def test_a_second_load_takes_the_compiled_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "templates"
    first = render_both(default_roles_dir(), cache)
    assert first == ("keep;\n", "/etc/dovecot/autoreply/a@example.org.sieve")
    with monkeypatch.context() as m:
        no_compiling(m)
        assert render_both(default_roles_dir(), cache) == first


def test_an_edited_template_is_compiled_again(tmp_path: Path) -> None:
    roles_dir = tmp_path / "roles"
    shutil.copytree(default_roles_dir(), roles_dir)
    cache = tmp_path / "templates"
    render_both(roles_dir, cache)
    (roles_dir / "dovecot/templates/sieve.j2").write_text("# edited\n{{ item.script }}")
    assert render_both(roles_dir, cache)[0] == "# edited\nkeep;\n"
    roles = load_roles(roles_dir, cache)
    assert compile_snippet(roles, "{{ 1 + 1 }}", "test").render() == "2"


@pytest.mark.parametrize("forge", ["plain", "forged-tag", "forged-code"])
def test_a_planted_store_is_never_loaded(tmp_path: Path, forge: str) -> None:
    """Every file the store would read, planted before the first run: the pack and a loose
    file under each key it asks for. 'forged-code' holds marshalled code that would write the
    marker when a template runs, under another key's tag."""
    probe = tmp_path / "probe"
    expected = render_both(default_roles_dir(), probe)
    (pack,) = probe.glob("pack-*.pickle")
    tag = pack.name.removeprefix("pack-").removesuffix(".pickle")
    assert tag == environment_fingerprint(load_roles(default_roles_dir()).env)
    keys = list(pickle.loads(pack.read_bytes()[len(MAGIC) + 32 :]))
    marker = tmp_path / "marker"
    if forge == "forged-code":
        evil_code = compile(f"open({str(marker)!r}, 'w')", "evil", "exec")
        evil = pickle.dumps({key: marshal.dumps(evil_code) for key in keys})
    else:
        evil = pickle.dumps({key: Payload(marker) for key in keys})
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    for name in [pack.name, *(f"loose-{tag}-{key}.pickle" for key in keys)]:
        (planted / name).write_bytes(forged_file(name, evil, forge))
    assert render_both(default_roles_dir(), planted) == expected
    assert not marker.exists()


def test_role_files_parse_once_and_again_when_edited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roles_dir, cache = tmp_path / "roles", tmp_path / "cache"
    shutil.copytree(default_roles_dir(), roles_dir)
    first = load_roles(roles_dir, cache)
    first.save_compiled()
    parsed: list[str] = []
    real = YAML.load

    def counted(self: YAML, text: str) -> Any:
        parsed.append(text)
        return real(self, text)

    monkeypatch.setattr(YAML, "load", counted)
    again = load_roles(roles_dir, cache)
    assert parsed == []  # every role.yml and defaults.yml from the store
    assert again.roles == first.roles
    role_file = roles_dir / "dovecot/role.yml"
    role_file.write_text(role_file.read_text().replace('mode: "0640"', 'mode: "0600"', 1))
    edited = load_roles(roles_dir, cache)
    assert len(parsed) == 1
    assert edited.roles["dovecot"] != first.roles["dovecot"]
