"""Paper-comparison table (Markdown) from the fits of one sweep, next to the paper's published gains.

    python analysis/paper_comparison.py --db sqlite:///ebt_scale.db --sweep paper [--resamples 2000]

Uses the public API only (Store + fit service; stored fits are reused). Columns: our M1 rate gain with its
95% interval, the paper's arXiv v1 and ICLR values, whether the paper's value lies inside our interval,
the Holm-adjusted p-value and verdict, and the exponent (M2) gain as the alternative reading.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ebt_scaling.db import Store  # noqa: E402
from ebt_scaling.fit import FitSettings  # noqa: E402
from ebt_scaling.fit.results import PAPER_ICLR, PAPER_V1  # noqa: E402
from ebt_scaling.fit.service import fit_store  # noqa: E402


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.2f}%"


def ci(c: tuple[float | None, float | None] | None) -> str:
    return "-" if not c or c[0] is None or c[1] is None else f"[{c[0] * 100:+.1f}%, {c[1] * 100:+.1f}%]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=os.environ.get("EBT_SCALE_DB", "sqlite:///ebt_scale.db"))
    ap.add_argument("--sweep", default=None)
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    with Store(args.db) as store:
        res = fit_store(store, sweep=args.sweep, settings=FitSettings(resamples=args.resamples))
    print("| axis | our rate gain | 95% interval | paper v1 | paper ICLR | v1 inside our interval | "
          "p (Holm) | verdict | exponent gain (M2) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in res.fits:
        c = f.comparison  # typed results (ebt_scaling.fit.results.Comparison), None without both families
        if c is None:
            print(f"| {f.axis} | - | - | {pct(PAPER_V1.get(f.axis))} | {pct(PAPER_ICLR.get(f.axis))} | - | - | "
                  "not testable | - |")
            continue
        lo, hi = c.rate_gain_ci
        v1 = c.paper_v1
        inside = "-" if v1 is None or lo is None or hi is None else ("yes" if lo <= v1 <= hi else "no")
        p = c.p_value_holm
        print(f"| {f.axis} | {pct(c.rate_gain)} | {ci(c.rate_gain_ci)} | {pct(v1)} | "
              f"{pct(c.paper_iclr)} | {inside} | {'-' if p is None else f'{p:.3g}'} | "
              f"{c.verdict or 'not testable'} | {pct(c.alpha_gain)} {ci(c.alpha_gain_ci)} |")
    for m in res.messages:
        print(f"\n{m}")


if __name__ == "__main__":
    main()
