#!/usr/bin/env bash
# Install everything the tests need (Debian packages + a virtualenv) and run lint, types and
# the whole test suite (unit, runtime, e2e with real Postfix/Dovecot/sshd/redis). Needs root:
# e2e tests create network namespaces and start Postfix/Dovecot as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (sudo): e2e tests start Postfix/Dovecot and network namespaces" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv python3-dev gcc \
  postfix dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-sieve \
  dovecot-managesieved openssh-server openssh-client sudo redis-server swaks pflogsumm postfwd \
  iproute2 procps openssl ssl-cert faketime ca-certificates >/dev/null
# The example inventory points at Debian's snakeoil pair; containers may lack it.
make-ssl-cert generate-default-snakeoil

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

ruff check .
ruff format --check .
mypy compiler schemas
mypy runtime

set +e
pytest -p no:cacheprovider "$@"
status=$?
set -e
# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
if [ "$status" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
