"""The quick cross-file check of domains finds exactly what the full one finds.

`check_domains` first tries set operations over the whole inventory and falls back to the
step-by-step check (which places every error) when anything may be wrong. Random small
inventories, with names drawn from a few letters so that clashes, loops, foreign names and
dangling targets are frequent, must give the same findings either way.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.load.crosscheck import (
    DomainSource,
    _check_domains_fully,
    _check_domains_quickly,
    check_domains,
)
from schemas.domain import Domain

BLF = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
DOMAINS = ("a.test", "b.test", "c.test")
LOCALS = ("x", "y", "z")

# alias.test is an alias domain of a.test in the runs that pass `ALIASES`.
address = st.builds(lambda local, dom: f"{local}@{dom}", st.sampled_from(LOCALS),
                    st.sampled_from((*DOMAINS, "far.example", "alias.test")))  # fmt: skip
ALIASES = {"alias.test": "a.test"}
# A declared name: mostly a local part, sometimes a full address (own domain or another).
name = st.one_of(st.sampled_from(LOCALS), st.sampled_from(LOCALS), address)


@st.composite
def sources(draw: st.DrawFn) -> list[DomainSource]:
    # Half of the inventories keep the per-file rules (one file per domain, own names only),
    # so that the quick path is taken often, with or without loops and dangling targets.
    tidy = draw(st.booleans())
    domains = st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=4, unique=tidy)
    out = []
    for dom in draw(domains):
        names = st.sampled_from(LOCALS) if tidy else name
        accounts = [
            {"name": n, "password": BLF, "enabled": draw(st.booleans())}
            for n in draw(st.lists(names, max_size=3))
        ]
        redirects = [
            {"name": n, "to": draw(st.lists(address, min_size=1, max_size=2))}
            for n in draw(st.lists(names, max_size=3, unique=tidy))
        ]
        catch_all = draw(st.one_of(st.none(), address)) if draw(st.integers(0, 3)) == 0 else None
        domain = Domain.model_validate(
            {"domain": dom, "accounts": accounts, "redirects": redirects, "catch_all": catch_all}
        )
        stem = dom if tidy or draw(st.integers(0, 9)) else "misnamed.test"
        out.append(DomainSource(file=f"domains/{stem}-{len(out)}.yml", stem=stem, domain=domain))
    return out


@settings(max_examples=400, deadline=None)
@given(sources(), st.booleans())
def test_quick_check_equals_the_full_check(srcs: list[DomainSource], aliased: bool) -> None:
    aliases = ALIASES if aliased else None
    full = _check_domains_fully(srcs, aliases)
    quick = _check_domains_quickly(srcs, aliases)
    if any(f.severity == "error" for f in full):
        assert quick is None
    if quick is not None:
        assert quick == full
    assert check_domains(srcs, aliases) == full


def test_quick_check_reports_dangling_targets_in_file_order() -> None:
    def source(dom: str, redirects: list[dict[str, object]]) -> DomainSource:
        domain = Domain.model_validate({"domain": dom, "redirects": redirects})
        return DomainSource(file=f"domains/{dom}.yml", stem=dom, domain=domain)

    srcs = [
        source("a.test", [{"name": "r", "to": ["gone@b.test", "far@far.example"]}]),
        source("b.test", [{"name": "s", "to": ["r@a.test"]}, {"name": "t", "to": "nope@a.test"}]),
    ]
    quick = _check_domains_quickly(srcs)
    assert quick is not None
    assert [(f.file, f.path, f.severity) for f in quick] == [
        ("domains/a.test.yml", ("redirects", 0, "to", 0), "warning"),
        ("domains/b.test.yml", ("redirects", 1, "to", 0), "warning"),
    ]
    assert quick == _check_domains_fully(srcs)
