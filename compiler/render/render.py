"""Render a host's file tree from its `HostConfig` and the roles.

Each role of the host renders the files its role.yml lists; every path belongs to exactly one
role. No I/O but reading templates; the result is deterministic (FileTree iterates sorted).
"""

from __future__ import annotations

from typing import Any

import jinja2

from compiler.render.context import host_role_names, make_context
from compiler.render.join import DomainSetCache
from compiler.render.resolve import HostConfig
from compiler.render.roles import Role, RoleError, RoleFile, Roles, compile_snippet, prepare_render
from compiler.types import FileTree, RenderedFile


class RenderError(Exception):
    """A host cannot be rendered; the message names the host and the cause."""


def _template(roles: Roles, role: Role, spec: RoleFile) -> jinja2.Template:
    try:
        return roles.env.get_template(f"{role.name}/{spec.template}")
    except jinja2.TemplateError as exc:
        raise RoleError(f"roles/{role.name}/templates/{spec.template}: {exc}") from exc


def render_role(roles: Roles, role: Role, context: dict[str, Any]) -> list[RenderedFile]:
    files = []
    for i, spec in enumerate(role.files):
        where = f"roles/{role.name}/role.yml: files[{i}]"
        template = _template(roles, role, spec)
        path_template = compile_snippet(roles, spec.path, f"{where}.path")
        # One variables dict per file spec, globals included, for all its items.
        variables = dict(template.globals, **context)
        variables.update(path_template.globals)
        if spec.rows:
            variables["rows"] = getattr(context["tables"], spec.rows)
        items = context[spec.each] if spec.each else [None]
        render_path = prepare_render(path_template, variables)
        render_text = prepare_render(template, variables)
        for item in items:
            variables["item"] = item
            try:
                path = render_path().strip()
            except jinja2.TemplateError as exc:
                raise RoleError(f"{where}.path: {exc}") from exc
            if not path.startswith("/"):
                raise RoleError(f"{where}: path {path!r} is not absolute")
            try:
                text = render_text()
            except jinja2.TemplateError as exc:
                raise RoleError(f"roles/{role.name}/templates/{spec.template}: {exc}") from exc
            content = text.encode("utf-8")
            files.append(
                RenderedFile(
                    path=path,
                    content=content,
                    mode=spec.mode,
                    owner=spec.owner,
                    group=spec.group,
                    role=role.name,
                    sensitive=spec.sensitive,
                    mask=spec.mask,
                )
            )
    return files


def render_host(cfg: HostConfig, roles: Roles, cache: DomainSetCache | None = None) -> FileTree:
    """Every file the host needs, from its roles (`host_role_names`). Hosts rendered with one
    `cache` share the work that depends on their domains only."""
    context = make_context(cfg, cache)
    files: dict[str, RenderedFile] = {}
    for name in host_role_names(cfg):
        if name not in roles.roles:
            raise RenderError(f"host {cfg.name}: role {name!r} not found in {roles.path}")
        for rendered in render_role(roles, roles[name], context):
            other = files.get(rendered.path)
            if other is not None:
                raise RenderError(
                    f"host {cfg.name}: {rendered.path} is rendered by roles {other.role!r} and "
                    f"{rendered.role!r}; each path must belong to one role"
                )
            files[rendered.path] = rendered
    return FileTree(dict(sorted(files.items())))
