#!/usr/bin/env bash
# Start a throw-away PostgreSQL 15 server on a loopback port (as user postgres: initdb refuses root),
# print its URL on stdout. Stop it with: scripts/pg-temp.sh stop DIR
set -euo pipefail
if [ "${1:-}" = "stop" ]; then
  dir=$2
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  exit 0
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PGBIN" ] || { echo "pg-temp: no PostgreSQL server installed (apt-get install -y postgresql)" >&2; exit 1; }
PORT=${PGPORT_TEMP:-$(( 54000 + RANDOM % 900 ))}
ROOT=$(mktemp -d /tmp/ebt-pg.XXXXXX)
chmod 755 "$ROOT"
mkdir -p "$ROOT/sock"
chown -R postgres:postgres "$ROOT"
runuser -u postgres -- "$PGBIN/initdb" -D "$ROOT/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$ROOT/data" -l "$ROOT/server.log" \
  -o "-p $PORT -c listen_addresses=127.0.0.1 -k $ROOT/sock -c fsync=off -c max_connections=200" -w -t 60 start >/dev/null
runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres ebt_test
echo "$ROOT postgresql+psycopg://postgres@127.0.0.1:$PORT/ebt_test"
