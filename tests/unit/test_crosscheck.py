"""Cross-checks on models: redirect graph loops, duplicates, host references."""

from __future__ import annotations

from compiler.load.crosscheck import DomainSource, check_domains, check_hosts, check_postfix_main
from schemas.domain import Domain


def source(
    name: str, redirects: dict[str, list[str]], accounts: tuple[str, ...] = ()
) -> DomainSource:
    blf = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
    domain = Domain.model_validate(
        {
            "domain": name,
            "accounts": [{"name": a, "password": blf} for a in accounts],
            "redirects": [{"name": k, "to": v} for k, v in redirects.items()],
        }
    )
    return DomainSource(f"domains/{name}.yml", name, domain)


def loops(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [f.message.split(" (mail")[0] for f in findings if "loop" in f.message]


def test_long_chain_is_not_a_loop_and_does_not_recurse_too_deep() -> None:
    n = 5000
    chain = {f"r{i}": [f"r{i + 1}@x.test"] for i in range(n)}
    chain[f"r{n}"] = ["end@y.test"]
    assert loops(check_domains([source("x.test", chain)])) == []


def test_long_loop_is_found_once_with_every_hop() -> None:
    n = 3000
    ring = {f"r{i}": [f"r{(i + 1) % n}@x.test"] for i in range(n)}
    (message,) = loops(check_domains([source("x.test", ring)]))
    assert message.count("→") == n


def test_two_separate_loops_are_two_findings() -> None:
    redirects = {
        "a": ["b@x.test"],
        "b": ["a@x.test"],
        "c": ["c@x.test", "keep@y.test"],
        "d": ["a@x.test"],  # leads into a loop, is not part of it
    }
    findings = check_domains([source("x.test", redirects)])
    assert loops(findings) == ["redirect loop: a@x.test → b@x.test → a@x.test"]
    # c names itself without a mailbox: not a loop Postfix walks, a bounce of its own.
    (itself,) = [f for f in findings if "names itself" in f.message]
    assert itself.path == ("redirects", 2, "to", 0)


def test_loop_finding_points_at_the_target_that_closes_it() -> None:
    findings = check_domains(
        [source("x.test", {"a": ["out@y.test", "b@x.test"], "b": ["a@x.test"]})]
    )
    (finding,) = [f for f in findings if "loop" in f.message]
    assert finding.path == ("redirects", 0, "to", 1)
    assert [r.path for r in finding.refs] == [("redirects", 0, "name"), ("redirects", 1, "name")]


def test_partial_sources_report_original_indexes() -> None:
    src = source("x.test", {"a": ["z@y.test"]}, accounts=("a", "a"))
    partial = DomainSource(
        src.file, src.stem, src.domain, account_index=(2, 7), redirect_index=(4,)
    )
    (dup,) = [f for f in check_domains([partial]) if "twice" in f.message]
    assert dup.path == ("accounts", 7, "name")
    assert dup.refs[0].path == ("accounts", 2, "name")


def test_hosts_on_raw_data_tolerate_garbage() -> None:
    raw = {"hosts": {"a": "nonsense", "b": {"groups": "x", "domains": [1, "Y.test"]}}}
    findings = check_hosts(raw, {"y.test": "domains/y.test.yml"}, file="mailcfg.yml")
    assert findings == []


def test_postfix_main_tolerates_non_mapping_layers() -> None:
    assert check_postfix_main({"policy": ["x"], "hosts": {"a": {"policy": 3}}}, file="m") == []
