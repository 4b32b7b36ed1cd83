#!/usr/bin/env bash
# The README's main job on a Debian or Ubuntu machine: install the few packages it needs
# (python3-venv; ssl-cert for the snakeoil pair the example inventory names), make the
# virtualenv .venv as the user who runs this, install mailcfg into it and apply the example
# inventory (its hosts are directories under .mailcfg/hosts/: no server needed). Extra
# arguments go to `mailcfg apply` (e.g. --yes).
#
# Root is needed only for apt and the snakeoil pair, and only when they are missing: as root it
# runs them directly (a minimal system has no sudo), as a user through sudo. Repeating it is
# safe and quick: nothing is installed twice, and the second apply says "no changes".
# The test command (scripts/test.sh) keeps its own virtualenv and never touches .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(python3 python3-venv ssl-cert)
SNAKEOIL=/etc/ssl/certs/ssl-cert-snakeoil.pem
# The interpreter apt's python3-venv serves; a python3 earlier on PATH (pyenv, conda) may
# lack venv or differ between root and the user.
PYTHON=/usr/bin/python3
VENV=.venv
# pyproject.toml's hash at the last install: a changed one (new dependencies) reinstalls.
STAMP="$VENV/.mailcfg-installed"

say() { echo "apply-example: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    say "needs root for: $*; run this as root, or install sudo"
    exit 1
  fi
}

missing_packages() {
  local package
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -qx 'install ok installed' ||
      echo "$package"
  done
}

install_packages() {
  local missing package
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" -eq 0 ] && return
  say "installing ${missing[*]} with apt"
  # A fresh system (as container images ship) has empty package lists.
  for package in "${missing[@]}"; do
    if ! apt-cache show "$package" >/dev/null 2>&1; then
      as_root apt-get update -qq
      break
    fi
  done
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

make_venv() {
  if [ -e "$VENV" ] && [ ! -w "$VENV" ]; then
    say "$VENV is not writable by $(id -un) (made by another user?); remove it and run again"
    exit 1
  fi
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    say "making the virtualenv $VENV"
    "$PYTHON" -m venv --clear "$VENV"
  fi
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || ! [ -x "$VENV/bin/mailcfg" ]; then
    say "installing mailcfg and its dependencies into $VENV (pip)"
    "$VENV/bin/pip" install -q -e .
    echo "$want" >"$STAMP"
  fi
}

install_packages
if [ ! -e "$SNAKEOIL" ]; then
  as_root make-ssl-cert generate-default-snakeoil
fi
make_venv
exec "$VENV/bin/mailcfg" apply inventory/ "$@"
