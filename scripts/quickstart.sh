#!/usr/bin/env bash
# The main job on the embedded default: a tiny CPU run on an offline English corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
.venv/bin/ebt-scale version
