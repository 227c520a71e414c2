#!/usr/bin/env bash
# Install the SAP CAP service the OData interop tests sync with (test-only): the committed
# package.json, package-lock.json and CDS model of tests/interop/cap/ are copied into .cap/
# (ignored by git) and its packages installed there with `npm ci` from the npm registry, at
# the lock file's versions. Idempotent: npm runs only when either file changed or
# node_modules is missing. Needs Node 20+ and npm. (To move to newer versions: `npm install`
# in tests/interop/cap/ updates the lock file; commit it.)
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
SRC=$HERE/tests/interop/cap
DEST=${DUALWRITE_CAP_DIR:-$HERE/.cap}

say() { printf 'cap: %s\n' "$*"; }
die() { printf 'cap: ERROR: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null || die "node is not installed (apt-get install nodejs, Node 20 or later)"
command -v npm >/dev/null || die "npm is not installed (apt-get install npm)"
major=$(node -p 'process.versions.node.split(".")[0]')
(( major >= 20 )) || die "Node $major is too old for @sap/cds 9: install Node 20 or later"

mkdir -p "$DEST"
# the model is copied when it changed (a running server may be reading it); the install only
# when the dependencies changed
for part in db srv; do
  if ! diff -rq "$SRC/$part" "$DEST/$part" >/dev/null 2>&1; then
    rm -rf "$DEST/$part.new" && cp -r "$SRC/$part" "$DEST/$part.new"
    rm -rf "$DEST/$part" && mv "$DEST/$part.new" "$DEST/$part"
  fi
done
if [[ -d $DEST/node_modules/@sap/cds && -d $DEST/node_modules/@cap-js/sqlite ]] \
   && cmp -s "$SRC/package.json" "$DEST/package.json" \
   && cmp -s "$SRC/package-lock.json" "$DEST/.installed-lock.json"; then
  say "up to date in $DEST"
  exit 0
fi
cp "$SRC/package.json" "$SRC/package-lock.json" "$DEST/"
# npm ci: exactly the versions of the committed lock file
say "installing @sap/cds and @cap-js/sqlite into $DEST (npm ci)"
(cd "$DEST" && npm ci --no-audit --no-fund --loglevel=error) \
  || die "npm ci failed in $DEST: is the npm registry reachable? (npm config get registry)"
cp "$SRC/package-lock.json" "$DEST/.installed-lock.json"
[[ -f $DEST/node_modules/@sap/cds/bin/serve.js ]] || die "@sap/cds installed without bin/serve.js"
say "installed in $DEST"
