#!/usr/bin/env bash
# What the console's browser tests need besides the Python packages of `.[dev]`:
#   - Debian's Chromium (/usr/bin/chromium), which Playwright drives through executable_path
#     (Playwright's own browser downloads are not used: `playwright install` is never run);
#   - the Python package playwright in the virtualenv given as $1 (default .venv).
# Idempotent: each step checks first and does nothing when it is already right. It prints what
# it does.
set -euo pipefail

VENV=${1:-.venv}
CHROMIUM=/usr/bin/chromium

say() { printf 'browser: %s\n' "$*"; }
die() { printf 'browser: ERROR: %s\n' "$*" >&2; exit 1; }

# --- Chromium (Debian package) -----------------------------------------------------------------
if [[ ! -x $CHROMIUM ]]; then
  (( EUID == 0 )) || die "$CHROMIUM is missing; install it as root: apt-get install -y chromium"
  say "installing Debian's chromium (apt-get install -y chromium)"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine may have no package lists yet; an old list may name a version that is gone.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  [[ -x $CHROMIUM ]] || die "apt-get installed chromium but $CHROMIUM is not there"
fi
say "chromium ok ($($CHROMIUM --version 2>/dev/null | head -n1))"

# --- playwright (Python package, in the virtualenv) ---------------------------------------------
[[ -x $VENV/bin/python ]] || die "no virtualenv at $VENV; run \`make lint\` (or make test) first"
if ! "$VENV/bin/python" -c 'import playwright.sync_api' 2>/dev/null; then
  say "installing the Python package playwright into $VENV"
  "$VENV/bin/python" -m pip install --quiet 'playwright>=1.45,<2'
fi
say "playwright ok ($("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("playwright"))'))"
