"""pandas DataFrames of runs and metric points (``ebt-scale export``), read through sweep membership."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ebt_scaling.db.codec import MEMBERS, METRICS, RUNS, SWEEPS, decode_value
from ebt_scaling.db.reads import RunReads
from ebt_scaling.records import RunRecord


class Frames(RunReads):
    def runs_dataframe(self, **filters: Any) -> Any:
        """The runs matching ``list_runs(**filters)`` as a pandas DataFrame, one row per run; parameter
        counts as ``params_<group>``, FLOPs as ``flops_<convention>``, summary metrics by name."""
        import pandas as pd

        runs = self.list_runs(**filters)
        return pd.DataFrame([run_row(r) for r in runs], columns=None if runs else list(BASE_COLUMNS))

    def metrics_dataframe(self, sweep: str | None = None, name: str | None = None,
                          run_ids: Sequence[int] | None = None) -> Any:
        """Metric points in long form: run_id, sweep, family, axis, x, seed, name, step, value."""
        import pandas as pd

        def unit(conn: Connection) -> list[tuple[Any, ...]]:
            # One row per point and sweep linking its run, with that sweep's axis and x.
            q = (select(METRICS.c.run_id, SWEEPS.c.name, RUNS.c.family, MEMBERS.c.axis, MEMBERS.c.x, RUNS.c.seed,
                        METRICS.c.name, METRICS.c.step, METRICS.c.value, METRICS.c.kind)
                 .join(RUNS, RUNS.c.id == METRICS.c.run_id).join(MEMBERS, MEMBERS.c.run_id == RUNS.c.id)
                 .join(SWEEPS, SWEEPS.c.id == MEMBERS.c.sweep_id))
            if sweep is not None:
                q = q.where(SWEEPS.c.name == sweep)
            if name is not None:
                q = q.where(METRICS.c.name == name)
            if run_ids is not None:
                q = q.where(METRICS.c.run_id.in_(list(run_ids)))
            q = q.order_by(METRICS.c.run_id, SWEEPS.c.id, METRICS.c.name, METRICS.c.step)
            return [tuple(r) for r in conn.execute(q)]

        rows = self._unit(unit, write=False)
        return pd.DataFrame([(*r[:8], decode_value(r[8], r[9])) for r in rows],
                            columns=["run_id", "sweep", "family", "axis", "x", "seed", "name", "step", "value"])


BASE_COLUMNS = ("run_id", "sweep", "family", "axis", "x", "seed", "status", "source", "fit_eligible",
                "final_val_loss", "final_train_loss", "final_val_ppl", "tokens", "attempts", "reason", "host",
                "device", "checkpoint_dir", "config_hash", "created_at", "started_at", "finished_at",
                "heartbeat_at")


def run_row(r: RunRecord) -> dict[str, Any]:
    """A flat dict of one run (for tables, CSV, JSON and DataFrames)."""
    d: dict[str, Any] = {c: getattr(r, "id" if c == "run_id" else c) for c in BASE_COLUMNS}
    for k, n in sorted(r.params.items()):
        d[f"params_{k}"] = n
    for k, f in sorted(r.flops_per_token.items()):
        d[f"flops_{k}"] = f
    for k, v in sorted(r.extra_metrics.items()):
        d[k if k not in d else f"summary_{k}"] = v
    return d
