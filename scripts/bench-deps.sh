#!/usr/bin/env bash
# What bench/capture.py needs besides the services of scripts/services.sh:
#   - Bucardo (Debian package `bucardo`) and PL/Perl for PostgreSQL 15, which its triggers use;
#   - Bucardo's own configuration database `bucardo` (role `bucardo`, PID and log directories);
#   - wal_level = logical, for PostgreSQL's native logical replication.
# Idempotent: each step checks first and does nothing when it is already right, so a second run
# changes nothing. It prints what it does.
set -euo pipefail

PGHOST=127.0.0.1
PGVER=15
PACKAGES=(bucardo "postgresql-plperl-$PGVER")
PIDDIR=/var/run/bucardo
LOGDIR=/var/log/bucardo

say() { printf 'bench-deps: %s\n' "$*"; }
die() { printf 'bench-deps: ERROR: %s\n' "$*" >&2; exit 1; }

psql_q() { psql -h "$PGHOST" -U postgres -d "${2:-postgres}" -XAtqc "$1"; }
pg_up() { psql_q 'select 1' >/dev/null 2>&1; }

wait_for_pg() {  # PostgreSQL accepts connections again, or fail after 60 s
  local deadline=$((SECONDS + 60))
  until pg_up; do
    (( SECONDS < deadline )) || die "PostgreSQL did not come back within 60 s; see /var/log/postgresql/"
    sleep 0.5
  done
}

# --- Debian packages --------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done
if (( ${#missing[@]} )); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine may have no package lists yet; an old list may name a version that is gone.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
say "packages ok ($(dpkg-query -W -f='${Package} ${Version}\n' "${PACKAGES[@]}" | paste -sd, - | sed 's/,/, /g'))"

pg_up || die "PostgreSQL is not reachable on $PGHOST:5432; run: bash scripts/services.sh"

# --- wal_level = logical (native logical replication) -----------------------------------------
wal_level=$(psql_q 'show wal_level')
if [[ $wal_level != logical ]]; then
  say "wal_level is $wal_level: setting it to logical and restarting PostgreSQL $PGVER"
  psql_q "ALTER SYSTEM SET wal_level = 'logical'"
  pg_ctlcluster --skip-systemctl-redirect "$PGVER" main restart
  wait_for_pg
  [[ $(psql_q 'show wal_level') == logical ]] || die "wal_level is still not logical after the restart"
fi
say "wal_level ok (logical)"

# --- Bucardo's directories and database -------------------------------------------------------
# The benchmark runs `bucardo` as root; the Debian package only creates these for its own user.
for dir in "$PIDDIR" "$LOGDIR"; do
  if [[ ! -d $dir ]]; then
    say "creating $dir"
    mkdir -p "$dir"
  fi
done

# Create the superuser role ourselves: `bucardo install` would otherwise invent a password and
# append it to ~/.pgpass. The loopback server trusts local connections, so none is needed.
if [[ -z $(psql_q "select 1 from pg_roles where rolname = 'bucardo'") ]]; then
  say "creating superuser role bucardo"
  psql_q "CREATE ROLE bucardo LOGIN SUPERUSER"
fi

# The schema is installed once; its presence (the bucardo.bucardo_config table in database
# bucardo) is what says it is done.
installed=$(psql_q "select 1 from pg_database where datname = 'bucardo'")
if [[ -n $installed ]]; then
  installed=$(psql_q "select to_regclass('bucardo.bucardo_config') is not null" bucardo)
  [[ $installed == t ]] || installed=
fi
if [[ -z $installed ]]; then
  if [[ -n $(psql_q "select 1 from pg_database where datname = 'bucardo'") ]]; then
    say "database bucardo exists without Bucardo's schema: dropping it to install afresh"
    psql_q "DROP DATABASE bucardo"
  fi
  say "installing Bucardo's configuration database (bucardo install --batch)"
  out=$(cd /tmp && bucardo install --batch --quiet --no-bucardorc --db-host "$PGHOST" \
          --db-user postgres --db-name postgres --pid-dir "$PIDDIR" 2>&1) \
    || die "bucardo install failed: $out"
  [[ $(psql_q "select to_regclass('bucardo.bucardo_config') is not null" bucardo) == t ]] \
    || die "bucardo install did not create bucardo.bucardo_config: $out"
fi
say "Bucardo ok ($(bucardo --version 2>/dev/null | tail -n1), configuration database bucardo)"
