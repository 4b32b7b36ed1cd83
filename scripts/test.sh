#!/usr/bin/env bash
# The README's test command: install everything the tests need (Debian packages + the
# virtualenv .venv-test) and run lint, types and the whole test suite (unit, runtime, e2e with
# real Postfix/Dovecot/sshd/redis, and the README's main job on a fresh Debian root). Needs
# root: e2e tests create network namespaces and start Postfix/Dovecot as root; a user runs it
# through sudo (it asks for itself). `--setup-only` installs and stops there.
#
# It never touches the main job's .venv (scripts/apply-example.sh): the tests get their own
# virtualenv, made with root's python3. What pip leaves in the checkout goes back to the
# checkout's owner, so the user's own `pip install -e .` still works afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    exec sudo bash scripts/test.sh "$@"
  fi
  echo "scripts/test.sh: run as root (or install sudo): e2e tests start Postfix/Dovecot and network namespaces" >&2
  exit 1
fi
setup_only=false
if [ "${1:-}" = --setup-only ]; then
  setup_only=true
  shift
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv python3-dev gcc \
  postfix dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-sieve \
  dovecot-managesieved openssh-server openssh-client sudo redis-server swaks pflogsumm postfwd \
  iproute2 procps openssl ssl-cert faketime ca-certificates git mmdebstrap certbot pebble \
  rspamd clamav clamav-daemon postsrsd chromium chromium-driver \
  >/dev/null
# The example inventory points at Debian's snakeoil pair; containers may lack it.
make-ssl-cert generate-default-snakeoil

VENV=.venv-test
# A virtualenv made by another python3 (root's PATH differs from a user's) is made anew:
# `python3 -m venv` over it breaks it.
base() { "$1" -c 'import os, sys; print(os.path.realpath(sys._base_executable))'; }
if [ "$(base "$VENV/bin/python" 2>/dev/null)" != "$(base python3)" ]; then
  python3 -m venv --clear "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e '.[test]'
owner=$(stat -c %u:%g .)
for made in mailcfg.egg-info build; do
  if [ "$owner" != 0:0 ] && [ -e "$made" ]; then
    chown -R "$owner" "$made"
  fi
done
if "$setup_only"; then
  exit 0
fi
export PATH="$PWD/$VENV/bin:$PATH"

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
