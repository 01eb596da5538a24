#!/usr/bin/env bash
# Create .venv (if missing) and install ebt-scaling with pinned dependencies (CPU torch 2.13.0).
# Prints one line per stage with its time; a second run with nothing changed prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t0=$(date +%s)
stage() { echo "setup: $1 ($(( $(date +%s) - t0 )) s so far)"; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  stage "created .venv with $("$PY" --version 2>&1)"
fi
stamp=.venv/.ebt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing torch (the largest download; a minute or two on a fresh machine) ..."
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt torch
  # The version is read from the package metadata: importing torch before numpy is installed prints
  # "UserWarning: Failed to initialize NumPy".
  stage "torch $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))') installed"
  echo "setup: installing ebt-scaling and its other pinned dependencies (Ray, SQLAlchemy, PyAV, diffusers, ...) ..."
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,video]'
  touch "$stamp"
  stage "ebt-scaling installed; activate with: source .venv/bin/activate"
else
  echo "setup: .venv is up to date (delete .venv/.ebt-installed to reinstall)"
fi
