#!/usr/bin/env bash
# Make sure the loopback services the test suite talks to are up and configured.
# Idempotent: safe to run before every `make test`; it restarts nothing that is already right.
set -euo pipefail

PGHOST=127.0.0.1
MYHOST=127.0.0.1
NEED_PREPARED=64
TEST_DATABASES=(dualwrite_test_a dualwrite_test_b dualwrite_bench_a dualwrite_bench_b)
# A checkout of its own prefix (DUALWRITE_TEST_DB_PREFIX, see tests/conftest.py) uses
# <prefix>a and <prefix>b; each pytest-xdist worker gwN of `make test` (TEST_WORKERS of them)
# uses <prefix>gwN_a and <prefix>gwN_b, or dualwrite_gwN_a and dualwrite_gwN_b without a
# prefix. The tests create a missing one themselves; making them here keeps that off the clock.
PREFIX=${DUALWRITE_TEST_DB_PREFIX:-}
WORKERS=${TEST_WORKERS:-0}
[[ $WORKERS =~ ^[0-9]+$ ]] || { printf 'services: ERROR: TEST_WORKERS=%s is not a number of workers\n' "$WORKERS" >&2; exit 1; }
[[ -z $PREFIX || $PREFIX =~ ^[a-z0-9_]+$ ]] || { printf 'services: ERROR: DUALWRITE_TEST_DB_PREFIX=%s: use lower-case letters, digits and _\n' "$PREFIX" >&2; exit 1; }
[[ -n $PREFIX ]] && TEST_DATABASES+=("${PREFIX}a" "${PREFIX}b")
for ((n = 0; n < WORKERS; n++)); do
  TEST_DATABASES+=("${PREFIX:-dualwrite_}gw${n}_a" "${PREFIX:-dualwrite_}gw${n}_b")
done

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: ERROR: %s\n' "$*" >&2; exit 1; }

wait_for() {  # wait_for DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || return 1
    sleep 0.5
  done
}

pg_up() { psql -h "$PGHOST" -U postgres -d postgres -Atc 'select 1' ; }
my_up() { mariadb -h "$MYHOST" -uroot -e 'select 1' ; }
nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) ; }

# --- PostgreSQL -------------------------------------------------------------------------------
if ! pg_up >/dev/null 2>&1; then
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  wait_for postgres 60 pg_up || die "PostgreSQL is not reachable on $PGHOST:5432; start it with: pg_ctlcluster --skip-systemctl-redirect 15 main start"
fi
current=$(psql -h "$PGHOST" -U postgres -d postgres -Atc 'show max_prepared_transactions')
restart=""
if (( current < NEED_PREPARED )); then
  say "raising max_prepared_transactions $current -> $NEED_PREPARED (two-phase commit)"
  psql -h "$PGHOST" -U postgres -d postgres -qc "ALTER SYSTEM SET max_prepared_transactions = $NEED_PREPARED"
  restart=1
fi
# `capture: logical` (logical decoding) and its tests need wal_level = logical
level=$(psql -h "$PGHOST" -U postgres -d postgres -Atc 'show wal_level')
if [[ $level != logical ]]; then
  say "setting wal_level $level -> logical (capture: logical)"
  psql -h "$PGHOST" -U postgres -d postgres -qc "ALTER SYSTEM SET wal_level = logical"
  restart=1
fi
if [[ -n $restart ]]; then
  say "restarting PostgreSQL for the settings above"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main restart
  wait_for postgres 60 pg_up || die "PostgreSQL did not come back after the restart; see /var/log/postgresql/"
fi
for db in "${TEST_DATABASES[@]}"; do
  if [[ -z $(psql -h "$PGHOST" -U postgres -d postgres -Atc "select 1 from pg_database where datname='$db'") ]]; then
    psql -h "$PGHOST" -U postgres -d postgres -qc "CREATE DATABASE $db"
  fi
done
say "PostgreSQL ok (max_prepared_transactions=$(psql -h "$PGHOST" -U postgres -d postgres -Atc 'show max_prepared_transactions'), wal_level=$(psql -h "$PGHOST" -U postgres -d postgres -Atc 'show wal_level'))"

# --- MariaDB ----------------------------------------------------------------------------------
if ! my_up >/dev/null 2>&1; then
  say "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for mariadb 60 my_up || die "MariaDB is not reachable on $MYHOST:3306; start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
fi
for db in "${TEST_DATABASES[@]}"; do
  mariadb -h "$MYHOST" -uroot -e "CREATE DATABASE IF NOT EXISTS $db CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
done
say "MariaDB ok"

# --- NATS JetStream ---------------------------------------------------------------------------
if ! nats_up 2>/dev/null; then
  say "starting NATS"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
  wait_for nats 30 nats_up || die "NATS is not reachable on 127.0.0.1:4222; start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server"
fi
say "NATS ok"
