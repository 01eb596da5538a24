#!/usr/bin/env bash
# Step cost of several git revisions, side by side: each revision's own benchmarks/step_cost.py runs from a
# temporary worktree, the revisions alternate process by process for --rounds rounds (so load drift hits all
# alike), and every ratio is normalised inside its own process by the T++ step it timed next to the EBT.
#
#   benchmarks/compare_revisions.sh [--rounds N] [--out DIR] REV [REV ...] [-- STEP_COST_ARGS ...]
#   benchmarks/compare_revisions.sh e812a62 ff4267e HEAD -- --reps 7 --warmup 2
#
# HEAD means the working tree as it is (uncommitted changes included). Prints one JSON line per revision
# (the per-round ratios) and leaves every step_cost JSON in --out (default: a new temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=${PYTHON:-$root/.venv/bin/python}
rounds=3
out=""
revs=()
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2;;
    --out) out=$2; shift 2;;
    --) shift; break;;
    -h|--help) sed -n '2,10p' "$0"; exit 0;;
    *) revs+=("$1"); shift;;
  esac
done
if [ ${#revs[@]} -eq 0 ]; then
  echo "error: name at least one revision (e.g. HEAD); see --help" >&2; exit 2
fi
[ -x "$py" ] || { echo "error: no Python at $py; run scripts/setup.sh or set PYTHON" >&2; exit 2; }
out=${out:-$(mktemp -d /tmp/ebt-compare.XXXXXX)}
mkdir -p "$out"
wt=$(mktemp -d /tmp/ebt-compare-wt.XXXXXX)
cleanup() {
  for d in "$wt"/*; do [ -d "$d" ] && git worktree remove --force "$d" >/dev/null 2>&1 || true; done
  rm -rf "$wt"; git worktree prune
}
trap cleanup EXIT
declare -A dir
for rev in "${revs[@]}"; do
  if [ "$rev" = HEAD ]; then
    dir[$rev]=$root
  else
    git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "error: unknown revision $rev" >&2; exit 2; }
    dir[$rev]=$wt/$rev
    git worktree add --detach --quiet "${dir[$rev]}" "$rev"
  fi
done
for round in $(seq 1 "$rounds"); do
  for rev in "${revs[@]}"; do
    # step_cost.py puts its own checkout first on sys.path, so each revision measures its own package.
    OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$py" "${dir[$rev]}/benchmarks/step_cost.py" "$@" \
      > "$out/$rev.$round.json"
    echo "compare: $rev round $round done (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  done
done
"$py" - "$out" "${revs[@]}" <<'PY'
import json, sys
out, revs = sys.argv[1], sys.argv[2:]
keys = ("time_ratio_ebt_vs_tpp_math", "time_ratio_ebt_vs_tpp_sdpa", "time_ratio_ebt_pred_vs_tpp_math",
        "time_ratio_ebt_pred_vs_tpp_sdpa")
for rev in revs:
    rs, i = [], 1
    while True:
        try:
            rs.append(json.load(open(f"{out}/{rev}.{i}.json")))
        except FileNotFoundError:
            break
        i += 1
    line = {"revision": rev, "out": out}
    line.update({k: [round(r[k], 3) for r in rs] for k in keys if k in rs[0]})
    line["ebt_s"] = [round(r["median_s"]["ebt"], 4) for r in rs]
    line["tpp_math_s"] = [round(r["median_s"]["tpp_math"], 4) for r in rs]
    if rs[0].get("think"):
        line["think_extra_vs_full_step"] = [round(r["think"]["extra_vs_full_step"], 3) for r in rs]
        if "extra_vs_train_inner_step" in rs[0]["think"]:
            line["think_extra_vs_train_inner_step"] = [round(r["think"]["extra_vs_train_inner_step"], 3)
                                                       for r in rs]
    print(json.dumps(line))
PY
