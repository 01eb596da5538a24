#!/usr/bin/env bash
# The test command: installs into .venv if needed, starts a temporary PostgreSQL server when one can
# be started (and EBT_SCALE_TEST_PG is not already set), and runs the fast test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
pgdir=""
if [ -z "${EBT_SCALE_TEST_PG:-}" ] && [ "$(id -u)" = 0 ] && ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  read -r pgdir url < <(scripts/pg-temp.sh)
  export EBT_SCALE_TEST_PG=$url
  trap 'scripts/pg-temp.sh stop "$pgdir"' EXIT
  echo "test.sh: temporary PostgreSQL at $(printf '%s' "$url" | sed -E 's#(://[^:/@]*:)[^@]*@#\1***@#')"
fi
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
.venv/bin/python -m pytest "$@"
