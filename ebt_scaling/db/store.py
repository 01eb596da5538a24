"""``Store``: the results database behind one typed facade that takes and returns frozen records.

Every public method is one unit of work (``unit.py``: one transaction, retried as a whole on transient lock
errors) and returns records from ``ebt_scaling.records``, never ORM rows. SQLAlchemy errors leave as the
project's exceptions (``DuplicateError``, ``NotFound``, ``StoreError``) with credentials masked. The methods
live in one module per job:

    sweeps.py        sweeps and membership links (a run is a point of every sweep that links it)
    reads.py         runs as seen from a sweep (that sweep's axis and x)
    runs.py          planning and the run lifecycle (start, heartbeat, checkpoint, finish, reset)
    metrics.py       metric series
    imports.py       imported CSV rows and evaluation points
    fits.py          stored fits and the runs each used
    calibrations.py  measured throughputs
    leases.py        sweep lease, run claims, cancel requests
    frames.py        pandas DataFrames for export

    with Store("sqlite:///ebt_scale.db") as store:
        store.create_sweep("depth-tiny", "depth", spec={...}, code_version="abc123")
        runs = store.plan_runs("depth-tiny", planned)          # idempotent on config_hash
        store.mark_running(runs[0].id, host="node1")
        store.log_metrics(runs[0].id, [MetricPoint("val_loss", 100, 3.2)])
        store.finish_run(runs[0].id, "completed", result={"final_val_loss": 3.2})
"""

from __future__ import annotations

from ebt_scaling.db.calibrations import Calibrations
from ebt_scaling.db.codec import decode_value, encode_value, from_json, imported_config_hash, to_json
from ebt_scaling.db.fits import Fits
from ebt_scaling.db.frames import BASE_COLUMNS, Frames, run_row
from ebt_scaling.db.imports import MIXED_AXIS, ImportRow, Imports, ImportSummary
from ebt_scaling.db.leases import Leases
from ebt_scaling.db.metrics import Metrics
from ebt_scaling.db.runs import Runs

__all__ = ["BASE_COLUMNS", "MIXED_AXIS", "ImportRow", "ImportSummary", "Store", "decode_value", "encode_value",
           "from_json", "imported_config_hash", "run_row", "to_json"]


class Store(Runs, Metrics, Imports, Fits, Calibrations, Leases, Frames):
    """The results database at ``url``: created at the current schema revision if empty, unless ``create``
    is False (read-only commands), where a missing SQLite file or an empty database is a StoreError and
    nothing is written."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
