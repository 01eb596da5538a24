"""What a sweep is doing, read from the database alone (``ebt-scale status`` and ``ebt-scale sweeps``).

Everything comes from what the driver already records: run status, attempts, host and heartbeat, and the
metric series the workers report (``train_loss``, ``val_loss``, ``tokens_per_s`` and ``wall_time_s`` at
every logging step). So it works from any machine that reaches the database, while the driver runs.

ETAs use the measured training throughput: a run's remaining tokens (steps left x batch x context) over its
latest ``tokens_per_s``; a sweep's remaining tokens (running and not yet started runs) over the summed
throughput of its running runs. Evaluation pauses are not in ``tokens_per_s``, so ETAs lean optimistic.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ebt_scaling.records import RunRecord

if TYPE_CHECKING:
    from ebt_scaling.db.store import Store

SERIES = ("train_loss", "val_loss", "tokens_per_s", "wall_time_s")
UNFINISHED = ("planned", "running", "cancelled")


def _tokens_per_step(run: RunRecord) -> int | None:
    t = run.config.get("train", {}) if isinstance(run.config, dict) else {}
    m = run.config.get("model", {}) if isinstance(run.config, dict) else {}
    b, seq = t.get("batch_size"), m.get("sequence_len")
    return int(b) * int(seq) if b and seq else None


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def run_rows(store: Store, sweep: str) -> list[dict[str, Any]]:
    """One dict per run of ``sweep``: id, family, x, seed, status, step, steps, train/val loss, tokens/s,
    elapsed_s, eta_s, attempts, host, heartbeat_at."""
    runs = [r for r in store.list_runs(sweep=sweep) if r.source == "trained"]
    ids = [r.id for r in runs]
    latest = {name: store.final_metrics(ids, name) if ids else {} for name in SERIES}
    rows = []
    for r in runs:
        steps = r.config.get("train", {}).get("steps") if isinstance(r.config, dict) else None
        last = {name: latest[name].get(r.id) for name in SERIES}
        step = last["train_loss"].step if last["train_loss"] else 0
        if r.status == "completed" and steps:
            step = int(steps)
        tps = _finite(last["tokens_per_s"].value) if last["tokens_per_s"] else None
        eta = None
        per_step = _tokens_per_step(r)
        if r.status in UNFINISHED and steps and tps and per_step:
            eta = max(0, int(steps) - step) * per_step / tps
        rows.append({
            "id": r.id, "family": r.family, "x": r.x, "seed": r.seed, "status": r.status,
            "step": step, "steps": int(steps) if steps else None,
            "train_loss": _finite(last["train_loss"].value) if last["train_loss"] else None,
            "val_loss": _finite(last["val_loss"].value) if last["val_loss"] else r.final_val_loss,
            "tokens_per_s": tps,
            "elapsed_s": _finite(last["wall_time_s"].value) if last["wall_time_s"] else None,
            "eta_s": eta, "tokens_per_step": per_step, "attempts": r.attempts, "host": r.host,
            "heartbeat_at": r.heartbeat_at.isoformat(sep=" ", timespec="seconds") if r.heartbeat_at else None,
        })
    return rows


def sweep_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and the sweep's ETA (None while nothing runs: no throughput is measured)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    running = [r for r in rows if r["status"] == "running" and r["tokens_per_s"]]
    eta = None
    if running:
        remaining = sum(max(0, r["steps"] - r["step"]) * r["tokens_per_step"] for r in rows
                        if r["status"] in UNFINISHED and r["steps"] and r["tokens_per_step"])
        eta = remaining / sum(r["tokens_per_s"] for r in running)
    done = counts.get("completed", 0)
    failed = counts.get("failed", 0) + counts.get("diverged", 0)
    return {"runs": len(rows), "counts": counts, "done": done, "running": counts.get("running", 0),
            "failed": failed, "eta_s": eta, "finished": not any(r["status"] in UNFINISHED for r in rows)}
