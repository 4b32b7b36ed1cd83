"""`roles.prepare_render` (one Jinja2 context for every item of an `each` file) renders each
item exactly as a new context would: nothing a template sets at its top level (a variable set
for one item only, a macro, blocks of a parent template, autoescaping) is left for the next."""

from __future__ import annotations

import jinja2
import pytest

from compiler.render.roles import prepare_render

TEMPLATES = {
    "conditional-set": "{% if item.n == 1 %}{% set note = 'one' %}{% endif %}"
    "{{ item.n }}:{{ note | default('none') }}\n",
    "macro": "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(item.n) }}",
    "extends": "{% extends 'base' %}{% block body %}{{ item.n }}|{{ super() }}{% endblock %}",
    "autoescape": "{% autoescape item.n == 1 %}{{ '<' ~ item.n }}{% endautoescape %}{{ '&' }}",
    "exported": "{% set shown = item.n %}{{ shown }}{% if item.n == 1 %}{% set x = 1 %}{% endif %}",
}


@pytest.mark.parametrize("source", TEMPLATES.values(), ids=TEMPLATES.keys())
def test_each_render_equals_a_fresh_one(source: str) -> None:
    env = jinja2.Environment(
        loader=jinja2.DictLoader({"base": "[{% block body %}base{% endblock %}]", "t": source}),
        undefined=jinja2.StrictUndefined,
    )
    template = env.get_template("t")
    variables = dict(template.globals, item=None)
    render = prepare_render(template, variables)
    items = [{"n": n} for n in (1, 2, 1, 3)]
    got = []
    for item in items:
        variables["item"] = item
        got.append(render())
    assert got == [template.render(item=item) for item in items]
    assert len(set(got)) == 3
