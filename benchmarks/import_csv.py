"""Time and peak memory of ``ebt-scale import`` on a generated CSV of N rows (SQLite or PostgreSQL).

    python benchmarks/import_csv.py --rows 1000000 [--db URL] [--out import.json]

Rows: family, axis, x, seed, val_loss and one extra metric column, all distinct runs. The import runs as a
subprocess; its peak resident memory is the child's ``ru_maxrss``. Default database: a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="ebt-import-bench-"))
    csv = work / "rows.csv"
    with open(csv, "w") as f:
        f.write("family,axis,x,seed,val_loss,acc\n")
        for i in range(args.rows):
            family = "ebt" if i % 2 else "transformer_pp"  # (family, x, seed) distinct for every row
            f.write(f"{family},depth,{1 + i // 200},{i % 200 // 2},{3 + (i % 997) / 1000},{(i % 89) / 89:.4f}\n")
    db = args.db or f"sqlite:///{work / 'bench.db'}"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "ebt_scaling", "import", str(csv), "--sweep", f"bench-{int(t0)}",
                        "--db", db], capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"import failed: {r.stderr.strip()[-300:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    emit_json({"benchmark": "import_csv", "rows": args.rows, "csv_mb": round(csv.stat().st_size / 1e6, 1),
               "backend": db.split(":", 1)[0], "wall_s": round(wall, 1), "rows_per_s": round(args.rows / wall),
               "peak_rss_mb": round(peak_kb / 1024, 1), "output": r.stdout.strip()}, args.out)


if __name__ == "__main__":
    main()
