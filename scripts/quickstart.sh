#!/usr/bin/env bash
# The main job on the embedded default (a local Ray instance, SQLite, the offline Shakespeare corpus, CPU):
# the tiny depth sweep for EBT and Transformer++ with each family's LR tuned per level (3 LRs x 2 seeds:
# experiments/tiny/quickstart.toml), then the scaling fit on the tuned runs (the LR envelope) and the PDF report.
# Rerunning it continues where it stopped (completed runs are never trained twice).
# QUICKSTART_DIR (default: ./quickstart) holds the database, the Ray checkpoints and the report.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
dir=${QUICKSTART_DIR:-quickstart}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
db="sqlite:///$dir/ebt_scale.db"
cli=.venv/bin/ebt-scale
status=0
spec=experiments/tiny/quickstart.toml
sweep=depth-tiny-tuned
$cli sweep --spec "$spec" --db "$db" || status=$?
report=""
if [ "$status" -ne 130 ]; then
  if $cli fit --help >/dev/null 2>&1; then
    $cli fit --sweep $sweep --db "$db" || status=$?
  fi
  if $cli report --help >/dev/null 2>&1; then
    $cli report --sweep $sweep --db "$db" --out "$dir/report.pdf" && report="$dir/report.pdf" || status=$?
  fi
fi
echo
echo "quickstart finished in $(( $(date +%s) - t0 )) s (exit status $status)"
echo "database: $dir/ebt_scale.db"
echo "checkpoints: $dir/ebt_scale.runs"
if [ -n "$report" ]; then echo "report: $report"; else echo "report: not written (ebt-scale report is not available or failed)"; fi
echo "next, in this folder ($(pwd)):"
echo "  source .venv/bin/activate            # puts ebt-scale on PATH"
echo "  ebt-scale runs --db $db"
echo "  ebt-scale fit --sweep $sweep --holdout-largest --db $db"
exit "$status"
