"""Generate a large inventory for the compile benchmark (not committed; written to a temp dir).

1,000 domains, 50,000 accounts and 20,000 redirects as `mailcfg.yml` + one file per domain,
plus `big/accounts.yml`: the 50,000 accounts in one YAML file, for comparing raw parsers.

    python bench/compile/generate.py OUT_DIR [--domains 1000 --accounts 50 --redirects 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Real hashes (made once with `mailcfg passwd`); reused, since hashing 50k passwords would
# only measure bcrypt.
HASHES = (
    "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm",
    "{SHA512-CRYPT}$6$HCtl2OfuDCPtq5ES$ALGwnSCBLTTyJmhNafSMpiOhfiXnNIY/tbD6MXFFu/H9qPV8kPJ9hz"
    "InFuOMM4DsSM/EmP8xocY7QDkT1yUUF0",
)

MAILCFG_YML = """\
schema_version: 1
hosts:
  mx1:
    address: 127.0.0.1
    hostname: mx1.bench.test
    transport: local
    root: .mailcfg/bench/mx1
    groups: [frontline]
  mx2:
    address: 127.0.0.2
    hostname: mx2.bench.test
    transport: local
    root: .mailcfg/bench/mx2
    groups: [frontline]
    policy:
      limits: {per_hour: 100, per_day: 500, per_month: 10000}
groups:
  frontline:
    policy:
      spam: {spf: true, dnsbl: [zen.spamhaus.org, bl.spamcop.net]}
policy:
  global_filter: [casino, /^bulk@/]
  limits: {per_hour: 200, per_day: 1000, per_month: 20000}
"""


def domain_name(d: int) -> str:
    return f"d{d:04d}.bench.test"


def account_yaml(d: int, a: int, indent: str = "  ") -> str:
    dom = domain_name(d)
    lines = [
        f"{indent}- name: user{a:03d}",
        f'{indent}  password: "{HASHES[a % len(HASHES)]}"',
        f"{indent}  quota: {1 + a % 4}G",
    ]
    if a % 3 == 0:
        lines.append(f"{indent}  pop3: false")
    if a % 5 == 0:
        lines += [
            f"{indent}  whitelist:",
            f"{indent}    enabled: true",
            f'{indent}    entries: [friend@example.org, "@{dom}"]',
        ]
    if a % 10 == 0:
        lines += [f"{indent}  limits: {{per_hour: 50, per_day: 300}}"]
    if a % 25 == 0:
        lines += [
            f"{indent}  autoresponder:",
            f"{indent}    subject: Out of office",
            f"{indent}    body: |",
            f"{indent}      I am away this week.",
            f"{indent}      Regards",
        ]
    return "\n".join(lines) + "\n"


def domain_yaml(d: int, accounts: int, redirects: int) -> str:
    dom = domain_name(d)
    out = [f"domain: {dom}\nadmins: ['@team{d % 50}']\naccounts:\n"]
    out += [account_yaml(d, a) for a in range(accounts)]
    out.append("redirects:\n")
    for r in range(redirects):
        targets = [f"user{(r * 7) % accounts:03d}@{dom}"]
        if r % 4 == 0:
            targets.append(f"archive{r}@outside.example")
        out.append(f"  - name: alias{r:03d}\n    to: [{', '.join(targets)}]\n")
    return "".join(out)


def generate(out: Path, domains: int = 1000, accounts: int = 50, redirects: int = 20) -> Path:
    (out / "domains").mkdir(parents=True, exist_ok=True)
    (out / "mailcfg.yml").write_text(MAILCFG_YML)
    for d in range(domains):
        (out / "domains" / f"{domain_name(d)}.yml").write_text(domain_yaml(d, accounts, redirects))
    big = out.parent / (out.name + "-big")
    big.mkdir(exist_ok=True)
    with open(big / "accounts.yml", "w") as f:
        f.write("accounts:\n")
        for d in range(domains):
            for a in range(accounts):
                f.write(account_yaml(d, a).replace("name: user", f"name: d{d:04d}user"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=50, help="accounts per domain")
    parser.add_argument("--redirects", type=int, default=20, help="redirects per domain")
    args = parser.parse_args()
    generate(args.out, args.domains, args.accounts, args.redirects)
    print(f"inventory in {args.out}, single-file variant in {args.out}-big/accounts.yml")


if __name__ == "__main__":
    main()
