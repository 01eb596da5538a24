#!/usr/bin/env bash
# Create .venv (if missing) and install ebt-scaling with pinned dependencies (CPU torch 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ebt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  touch "$stamp"
fi
