"""Roles: loading `roles/<name>/` (role.yml, defaults.yml, templates/) and making activations.

A role is found by folder name. `role.yml` lists the files the role owns (template, host path,
mode, owner, group, sensitive, mask), its activation commands and what it needs on the
machine (`needs:` packages, users, directories, units: `compiler.render.needs`);
`defaults.yml` is the role's policy-defaults layer (`compiler.render.resolve` merges it below
the inventory). Paths and commands are small Jinja2 templates rendered with the host's
resolved config (`compiler.render.render` builds that context), so a role never hard-codes a
path the model can move.

Roles are code, trusted like the compiler (CI runs them from a trusted ref, never from a pull
request): inventory values reach templates only as data, never as template source, so a plain
Jinja2 environment is safe, and it renders paths thousands of times per host where the
sandbox's per-attribute checks cost about a tenth of a warm render. Commands are shell text
run as root: every value a command template interpolates goes through the `shq` filter
(`shlex.quote`).
`{stage}` (the staging directory, replaced later by the on-host script) goes inside the quoted
word: `{{ ("{stage}" ~ paths.postfix_config_dir) | shq }}` gives `'{stage}/etc/postfix'`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
from jinja2.nodes import EvalContext

from compiler.load.layers import merge_layers
from compiler.render.context import make_base_context
from compiler.render.masking import MASKS
from compiler.render.needs import NeedsError, RoleNeeds, parse_needs, render_needs
from compiler.render.resolve import HostConfig
from compiler.render.templatecache import TemplateCodeCache
from compiler.types import Activation, HostNeeds

_ROLE_KEYS = {
    "service",
    "action",
    "summary",
    "files",
    "build",
    "validate",
    "apply",
    "verify",
    "needs",
}
_FILE_KEYS = {"template", "path", "mode", "owner", "group", "sensitive", "mask", "rows", "each"}
_ACTIONS = {"reload", "restart", "none"}
# What str.splitlines() splits on, and NUL (never part of an argument).
_LINE_BREAK = re.compile(r"[\x00\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


class RoleError(Exception):
    """A role directory is malformed; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class RoleFile:
    """One file a role renders. `path` is a Jinja2 template of the host path; `rows` names a
    `compiler.render.tables.TableTexts` field, handed to the template as `rows`: the table's text,
    one newline-terminated line per row; `each` names a context list: one file per element,
    rendered with the element as `item` (path included); `mask` names how a sensitive file's
    masked view is made (a key of `compiler.render.masking.MASKS`)."""

    template: str
    path: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    sensitive: bool = False
    rows: str | None = None
    each: str | None = None
    mask: str | None = None


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    service: str
    action: str
    files: tuple[RoleFile, ...]
    defaults: Mapping[str, Any]
    build: tuple[str, ...] = ()
    validate: tuple[str, ...] = ()
    apply: tuple[str, ...] = ()
    verify: tuple[str, ...] = ()
    needs: RoleNeeds = field(default_factory=RoleNeeds)
    summary: str = ""  # what its apply does, for plans (see `Activation.summary`)


@dataclass(frozen=True, slots=True)
class Roles:
    """Every role of a roles directory plus the Jinja2 environment over their templates
    (template names are `<role>/<file>`). `snippets` caches the compiled path and command
    templates of role.yml by source: a render uses each one thousands of times (one path per
    autoresponder) and compiling a Jinja2 template costs about a millisecond."""

    path: Path
    roles: Mapping[str, Role]
    env: jinja2.Environment
    snippets: dict[str, jinja2.Template] = field(default_factory=dict, compare=False, repr=False)
    # Compiled code from earlier runs (`compiler.render.templatecache`); None: no cache.
    code_cache: TemplateCodeCache | None = field(default=None, compare=False, repr=False)

    def __getitem__(self, name: str) -> Role:
        return self.roles[name]

    def save_compiled(self) -> None:
        """Keep the code compiled by this run for the next one (with a `code_cache`)."""
        if self.code_cache is not None:
            self.code_cache.save()


def default_roles_dir() -> Path:
    """The `roles/` directory shipped in the repository."""
    return Path(__file__).resolve().parents[2] / "roles"


def quote_word(value: object) -> str:
    """The `shq` filter: `value` as one shell word (`shlex.quote` of its text). A line break
    or NUL is refused: a rendered command entry is split into one command per line, so a
    quoted newline would end the command there and start another."""
    text = str(value)
    if _LINE_BREAK.search(text):
        raise jinja2.TemplateRuntimeError(
            f"{text[:80]!r}: a value with a line break or NUL cannot be one word of a command"
        )
    return shlex.quote(text)


def make_environment(path: Path) -> jinja2.Environment:
    loader = jinja2.PrefixLoader(
        {
            d.name: jinja2.FileSystemLoader(d / "templates")
            for d in sorted(path.iterdir())
            if (d / "role.yml").is_file()
        }
    )
    env = jinja2.Environment(
        loader=loader,
        # Templates do not change during a run: no stat() of the file at each use.
        auto_reload=False,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shq"] = quote_word
    return env


def _read_yaml(path: Path, cache: TemplateCodeCache | None = None) -> Any:
    """The data of a role's YAML file; with `cache`, as parsed by an earlier run."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoleError(f"{path}: cannot read: {exc}") from exc
    parse = _parse_yaml(path)
    return cache.load_yaml(text, parse) if cache is not None else parse(text)


def _parse_yaml(path: Path) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        # Imported here: a warm run takes every file's data from the template cache.
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        try:
            return YAML(typ="safe").load(text)
        except YAMLError as exc:
            raise RoleError(f"{path}: cannot read: {exc}") from exc

    return parse


def _commands(path: Path, key: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RoleError(f"{path}: {key}: expected a list of command templates")
    return tuple(value)


def _role_file(path: Path, index: int, raw: object) -> RoleFile:
    where = f"{path}: files[{index}]"
    if not isinstance(raw, dict) or not {"template", "path"} <= raw.keys():
        raise RoleError(f"{where}: expected a mapping with 'template' and 'path'")
    unknown = raw.keys() - _FILE_KEYS
    if unknown:
        raise RoleError(f"{where}: unknown keys {sorted(unknown)}; allowed {sorted(_FILE_KEYS)}")
    try:
        mode = int(str(raw.get("mode", "0644")), 8)
    except ValueError:
        raise RoleError(f"{where}: mode {raw['mode']!r} is not an octal mode") from None
    mask = raw.get("mask")
    if mask is not None and (mask not in MASKS or raw.get("sensitive") is not True):
        raise RoleError(
            f"{where}: mask {mask!r}: a sensitive file's mask is one of {sorted(MASKS)}"
        )
    return RoleFile(
        template=str(raw["template"]),
        path=str(raw["path"]),
        mode=mode,
        owner=str(raw.get("owner", "root")),
        group=str(raw.get("group", "root")),
        sensitive=bool(raw.get("sensitive", False)),
        rows=str(raw["rows"]) if raw.get("rows") else None,
        each=str(raw["each"]) if raw.get("each") else None,
        mask=mask,
    )


def load_role(directory: Path, cache: TemplateCodeCache | None = None) -> Role:
    """Read one role directory (its YAML files' data from `cache`, if parsed before)."""
    spec_path = directory / "role.yml"
    spec = _read_yaml(spec_path, cache)
    if not isinstance(spec, dict):
        raise RoleError(f"{spec_path}: expected a mapping")
    unknown = spec.keys() - _ROLE_KEYS
    if unknown:
        raise RoleError(
            f"{spec_path}: unknown keys {sorted(unknown)}; allowed {sorted(_ROLE_KEYS)}"
        )
    action = spec.get("action", "none")
    if action not in _ACTIONS:
        raise RoleError(f"{spec_path}: action {action!r}; allowed {sorted(_ACTIONS)}")
    files = spec.get("files") or []
    if not isinstance(files, list):
        raise RoleError(f"{spec_path}: files: expected a list")
    try:
        needs = parse_needs(spec_path, spec.get("needs"))
    except NeedsError as exc:
        raise RoleError(str(exc)) from None
    defaults_path = directory / "defaults.yml"
    defaults = _read_yaml(defaults_path, cache) if defaults_path.is_file() else None
    if defaults is not None and not isinstance(defaults, dict):
        raise RoleError(f"{defaults_path}: expected a mapping of policy keys")
    return Role(
        name=directory.name,
        service=str(spec.get("service", directory.name)),
        action=action,
        files=tuple(_role_file(spec_path, i, raw) for i, raw in enumerate(files)),
        defaults=MappingProxyType(defaults or {}),
        build=_commands(spec_path, "build", spec.get("build")),
        validate=_commands(spec_path, "validate", spec.get("validate")),
        apply=_commands(spec_path, "apply", spec.get("apply")),
        verify=_commands(spec_path, "verify", spec.get("verify")),
        needs=needs,
        summary=_summary(spec_path, spec.get("summary")),
    )


def _summary(spec_path: Path, raw: object) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str) or "\n" in raw.strip():
        raise RoleError(f"{spec_path}: summary: expected one line of text")
    return raw.strip()


def load_roles(path: Path, code_cache: Path | None = None) -> Roles:
    """Load every role (a subdirectory with a role.yml) of `path`; with `code_cache` (a
    directory), templates compiled by an earlier run are taken from it (`save_compiled`)."""
    if not path.is_dir():
        raise RoleError(f"{path}: roles directory not found")
    env = make_environment(path)
    cache = TemplateCodeCache.open(code_cache, env) if code_cache is not None else None
    found = sorted(d for d in path.iterdir() if (d / "role.yml").is_file())
    roles = {d.name: load_role(d, cache) for d in found}
    if not roles:
        raise RoleError(f"{path}: no role found (expected <name>/role.yml)")
    return Roles(path=path, roles=MappingProxyType(roles), env=env, code_cache=cache)


def role_defaults(roles: Roles) -> dict[str, Any]:
    """All roles' defaults.yml merged (in role name order): the layer for `resolve_host`."""
    return merge_layers(*(roles[name].defaults for name in sorted(roles.roles)))


def compile_snippet(roles: Roles, source: str, where: str) -> jinja2.Template:
    """The compiled template of a role.yml string (a path or a command), cached per source."""
    template = roles.snippets.get(source)
    if template is None:
        try:
            template = roles.snippets[source] = (
                roles.code_cache.compile_string(source)
                if roles.code_cache is not None
                else roles.env.from_string(source)
            )
        except jinja2.TemplateError as exc:
            raise RoleError(f"{where}: {exc}") from exc
    return template


def render_snippet(roles: Roles, source: str, context: Mapping[str, Any], where: str) -> str:
    """Render a small template string from role.yml (a path or a command)."""
    template = compile_snippet(roles, source, where)
    try:
        return template.render(context)
    except jinja2.TemplateError as exc:
        raise RoleError(f"{where}: {exc}") from exc


def prepare_render(template: jinja2.Template, variables: dict[str, Any]) -> Callable[[], str]:
    """A function that renders `template` with `variables` as they are at each call (the
    caller changes `item` between calls); `variables` already hold the template's globals
    (`dict(template.globals, **context)`), made once for many renders: Jinja2 would copy them
    twice per call. One Jinja2 context serves every call, its own state (local and exported
    variables, blocks, the evaluation context) set back to a new context's before each: a new
    context per call cost more than rendering a one-line path or a small file."""
    context = template.new_context(variables, shared=True)
    env, name, blocks = template.environment, template.name, template.blocks
    root = template.root_render_func

    def render() -> str:
        context.vars.clear()
        context.exported_vars.clear()
        context.blocks = {k: [v] for k, v in blocks.items()}
        context.eval_ctx = EvalContext(env, name)
        return "".join(root(context))

    return render


def _render_commands(
    roles: Roles, role: Role, key: str, context: Mapping[str, Any]
) -> tuple[str, ...]:
    out: list[str] = []
    for i, source in enumerate(getattr(role, key)):
        text = render_snippet(roles, source, context, f"roles/{role.name}/role.yml: {key}[{i}]")
        out.extend(line.strip() for line in text.splitlines() if line.strip())
    return tuple(out)


def make_activation(roles: Roles, role: Role, context: Mapping[str, Any]) -> Activation:
    """A role's activation: its commands rendered with `context` (`make_base_context`)."""
    return Activation(
        role=role.name,
        service=role.service,
        action=role.action,
        build=_render_commands(roles, role, "build", context),
        validate=_render_commands(roles, role, "validate", context),
        apply=_render_commands(roles, role, "apply", context),
        verify=_render_commands(roles, role, "verify", context),
        summary=role.summary,
    )


def make_activations(
    cfg: HostConfig, roles: Roles, changed_roles: Collection[str]
) -> tuple[Activation, ...]:
    """The activation of each changed role of the host, in role name order."""
    context = make_base_context(cfg)
    result = []
    for name in sorted(set(changed_roles)):
        if name not in roles.roles:
            raise RoleError(f"{roles.path}: role {name!r} not found")
        result.append(make_activation(roles, roles[name], context))
    return tuple(result)


def make_needs(roles: Roles, names: Collection[str], context: Mapping[str, Any]) -> HostNeeds:
    """What the roles `names` (those a host has) need on the machine, rendered with
    `context` (`make_base_context`) and merged in role name order."""
    missing = sorted(set(names) - set(roles.roles))
    if missing:
        raise RoleError(f"{roles.path}: role {missing[0]!r} not found")

    def render(source: str, where: str) -> str:
        return render_snippet(roles, source, context, where).strip()

    try:
        return render_needs(((n, roles[n].needs) for n in sorted(set(names))), render)
    except NeedsError as exc:
        raise RoleError(str(exc)) from None
