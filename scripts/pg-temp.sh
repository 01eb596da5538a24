#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on a loopback port (as user postgres: initdb refuses root) and print
# "DIR URL" on stdout. TCP connections need a password (scram-sha-256, random per server, part of the URL),
# so tests can check that a wrong password is refused and never printed. Stop it with:
#   scripts/pg-temp.sh stop DIR
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
ROOT=$(mktemp -d /tmp/ebt-pg.XXXXXX)
chmod 755 "$ROOT"
mkdir -p "$ROOT/sock"
chown -R postgres:postgres "$ROOT"
PW=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$PW" > "$ROOT/pwfile"
chown postgres:postgres "$ROOT/pwfile"
chmod 600 "$ROOT/pwfile"
runuser -u postgres -- "$PGBIN/initdb" -D "$ROOT/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  --pwfile="$ROOT/pwfile" -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
rm -f "$ROOT/pwfile"
# A random loopback port; try another if it is taken (other test servers may run on this machine).
started=""
for _ in 1 2 3 4 5 6 7 8; do
  PORT=${PGPORT_TEMP:-$(( 54000 + RANDOM % 900 ))}
  if runuser -u postgres -- "$PGBIN/pg_ctl" -D "$ROOT/data" -l "$ROOT/server.log" \
      -o "-p $PORT -c listen_addresses=127.0.0.1 -k $ROOT/sock -c fsync=off -c max_connections=200" \
      -w -t 60 start >/dev/null; then
    started=1
    break
  fi
  [ -z "${PGPORT_TEMP:-}" ] || break
done
if [ -z "$started" ]; then
  echo "pg-temp: the server did not start; last lines of its log:" >&2
  tail -5 "$ROOT/server.log" >&2 || true
  rm -rf "$ROOT"
  exit 1
fi
runuser -u postgres -- "$PGBIN/createdb" -h "$ROOT/sock" -p "$PORT" -U postgres ebt_test
echo "$ROOT postgresql+psycopg://postgres:$PW@127.0.0.1:$PORT/ebt_test"
