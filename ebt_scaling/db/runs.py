"""Run lifecycle: planning (a run is stored once per config hash and linked to every sweep that plans it),
start, heartbeat, checkpoint, finish, and the reset of runs a dead driver left running."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.engine import Connection

from ebt_scaling.db.codec import (
    FLOPS,
    MEMBERS,
    PARAMS,
    RUNS,
    SUMMARY,
    chunks,
    dedup,
    encode_value,
    finite_or_none,
    to_json,
)
from ebt_scaling.db.reads import RunReads
from ebt_scaling.db.sweeps import Sweeps
from ebt_scaling.errors import NotFound, StoreError
from ebt_scaling.records import TERMINAL_STATUSES, PlannedRun, RunRecord


class Runs(Sweeps, RunReads):
    def plan_runs(self, sweep: str, runs: Sequence[PlannedRun]) -> list[RunRecord]:
        """Insert planned runs, skipping any whose config_hash is already stored (INSERT ... ON CONFLICT DO
        NOTHING, atomic across processes), and link every one to ``sweep`` at its planned axis and x: a run
        another sweep already planned or trained becomes a point of this sweep too, the same row. Returns the
        records as this sweep sees them, in input order."""
        runs = list(runs)

        def unit(conn: Connection) -> list[RunRecord]:
            sid = self._sweep_id(conn, sweep)
            if not runs:
                return []
            now = self._now(conn)
            rows = [dict(sweep_id=sid, family=r.family, axis=r.axis, x=float(r.x), seed=int(r.seed),
                         config_hash=r.config_hash, config=to_json(r.config), source="trained", status="planned",
                         attempts=0, fit_eligible=False, tokens=r.tokens, created_at=now) for r in runs]
            first: dict[str, dict[str, Any]] = {}
            for row in rows:  # input order, first occurrence of each hash
                first.setdefault(row["config_hash"], row)
            unique_rows = list(first.values())
            conn.execute(self._insert(RUNS).on_conflict_do_nothing(index_elements=["config_hash"]), unique_rows)
            ids = self._ids_by_hash(conn, [r["config_hash"] for r in unique_rows])
            self._link(conn, sid, [(ids[r["config_hash"]], r["axis"], r["x"]) for r in unique_rows])
            new_params, new_flops = [], []
            for r in runs:
                rid = ids[r.config_hash]
                new_params += [dict(run_id=rid, name=k, count=int(v)) for k, v in r.params.items()]
                new_flops += [dict(run_id=rid, convention=k, flops_per_token=float(v))
                              for k, v in r.flops_per_token.items()]
            if new_params:
                conn.execute(self._insert(PARAMS).on_conflict_do_nothing(), dedup(new_params, ("run_id", "name")))
            if new_flops:
                conn.execute(self._insert(FLOPS).on_conflict_do_nothing(), dedup(new_flops, ("run_id", "convention")))
            by_id = {rec.id: rec for rec in self._in_sweep(conn, sid, list(ids.values()))}
            return [by_id[ids[r.config_hash]] for r in runs]

        return self._unit(unit, what=f"planning runs of sweep {sweep!r}")

    def _update_run(self, conn: Connection, run_id: int, **values: Any) -> None:
        res = conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(**values))
        if res.rowcount == 0:
            raise NotFound(f"no run with id {run_id}; list runs with `ebt-scale runs`")

    def mark_running(self, run_id: int, host: str | None = None, device: str | None = None) -> RunRecord:
        """A run (re)starts: status running, attempts + 1, start time and heartbeat now."""

        def unit(conn: Connection) -> RunRecord:
            now = self._now(conn)
            values: dict[str, Any] = dict(status="running", attempts=RUNS.c.attempts + 1, started_at=now,
                                          heartbeat_at=now, finished_at=None, reason=None)
            if host is not None:
                values["host"] = host
            if device is not None:
                values["device"] = device
            self._update_run(conn, run_id, **values)
            return self._one(conn, run_id)

        return self._unit(unit, what=f"starting run {run_id}")

    def heartbeat_many(self, run_ids: Sequence[int]) -> int:
        """Heartbeat several runs in one transaction (the driver's periodic tick); returns how many exist."""
        ids = sorted({int(r) for r in run_ids})
        if not ids:
            return 0

        def unit(conn: Connection) -> int:
            now = self._now(conn)
            return sum(int(conn.execute(update(RUNS).where(RUNS.c.id.in_(chunk)).values(heartbeat_at=now)).rowcount)
                       for chunk in chunks(ids))

        return self._unit(unit, what="heartbeat")

    def finish_run(self, run_id: int, status: str, *, reason: str | None = None,
                   result: Mapping[str, Any] | None = None) -> RunRecord:
        """Record the end of a run. ``result`` may hold final_train_loss, final_val_loss, final_val_ppl,
        params, flops_per_token, tokens, checkpoint_dir, device (a ``RunResult`` as a dict works: its
        ``steps``, ``wall_time_s`` and numeric ``extra`` values go to the run's summary metrics).
        Non-finite final values are stored as NULL; ``fit_eligible`` = completed with a finite val loss."""
        if status not in TERMINAL_STATUSES:
            raise StoreError(f"finish_run: status {status!r} is not terminal; use one of "
                             f"{', '.join(TERMINAL_STATUSES)}")
        result = dict(result or {})

        def unit(conn: Connection) -> RunRecord:
            values: dict[str, Any] = dict(status=status, reason=reason, finished_at=self._now(conn))
            for key in ("final_train_loss", "final_val_loss", "final_val_ppl"):
                if key in result:
                    values[key] = finite_or_none(result[key])
            for key in ("checkpoint_dir", "device"):
                if result.get(key) is not None:
                    values[key] = str(result[key])
            if result.get("tokens") is not None:
                values["tokens"] = int(result["tokens"])
            if "final_val_loss" in values:
                val = values["final_val_loss"]
            else:
                val = conn.execute(select(RUNS.c.final_val_loss).where(RUNS.c.id == run_id)).scalar_one_or_none()
            values["fit_eligible"] = status == "completed" and val is not None
            self._update_run(conn, run_id, **values)
            self._replace_map(conn, PARAMS, run_id, "name", "count",
                              {k: int(v) for k, v in (result.get("params") or {}).items()})
            self._replace_map(conn, FLOPS, run_id, "convention", "flops_per_token",
                              {k: float(v) for k, v in (result.get("flops_per_token") or {}).items()})
            summary: dict[str, float] = {}
            for key in ("steps", "wall_time_s"):
                if isinstance(result.get(key), (int, float)) and not isinstance(result.get(key), bool):
                    summary[key] = float(result[key])
            for source in (result.get("extra") or {}, result.get("summary") or {}):
                for k, v in source.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        summary[str(k)] = float(v)
            self._upsert_summary(conn, run_id, summary)
            return self._one(conn, run_id)

        return self._unit(unit, what=f"finishing run {run_id}")

    def _replace_map(self, conn: Connection, table: Any, run_id: int, key: str, col: str,
                     values: dict[str, Any]) -> None:
        if not values:
            return
        conn.execute(delete(table).where(and_(table.c.run_id == run_id, table.c[key].in_(list(values)))))
        conn.execute(table.insert(), [{"run_id": run_id, key: k, col: v} for k, v in values.items()])

    def _upsert_summary(self, conn: Connection, run_id: int, values: Mapping[str, float]) -> None:
        if not values:
            return
        rows = []
        for k, v in values.items():
            val, kind = encode_value(v)
            rows.append(dict(run_id=run_id, name=k, value=val, kind=kind))
        ins = self._insert(SUMMARY)
        conn.execute(ins.on_conflict_do_update(index_elements=["run_id", "name"],
                                               set_={"value": ins.excluded.value, "kind": ins.excluded.kind}), rows)

    def reset_interrupted(self, sweep: str, run_ids: Collection[int] | None = None) -> int:
        """Runs of ``sweep`` left ``running`` by a dead driver go back to ``planned``; returns how many.
        ``run_ids``: only these (the runs whose claim this driver holds, so not one another live driver is
        training for another sweep that links it)."""

        def unit(conn: Connection) -> int:
            sid = self._sweep_id(conn, sweep)
            members = select(MEMBERS.c.run_id).where(MEMBERS.c.sweep_id == sid)
            cond = and_(RUNS.c.id.in_(members), RUNS.c.status == "running")
            if run_ids is not None:
                cond = and_(cond, RUNS.c.id.in_([int(r) for r in run_ids]))
            res = conn.execute(update(RUNS).where(cond).values(status="planned", heartbeat_at=None))
            return int(res.rowcount)

        return self._unit(unit, what=f"resetting interrupted runs of {sweep!r}")

    def set_checkpoint(self, run_id: int, path: str | None) -> None:
        self._unit(lambda conn: self._update_run(conn, run_id, checkpoint_dir=path),
                   what=f"setting the checkpoint of run {run_id}")
