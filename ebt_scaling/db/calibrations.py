"""Measured training throughputs (``ebt-scale calibrate``), read by the sweep plan."""

from __future__ import annotations

import math

from sqlalchemy import and_, delete, select
from sqlalchemy.engine import Connection

from ebt_scaling.db import schema
from ebt_scaling.db.codec import CALIBRATIONS, calibration_record
from ebt_scaling.db.unit import UnitOfWork
from ebt_scaling.errors import StoreError
from ebt_scaling.records import CalibrationRecord


class Calibrations(UnitOfWork):
    def save_calibration(self, cal: CalibrationRecord) -> CalibrationRecord:
        """Store a measured throughput; it replaces an earlier one of the same (device name, family, shape key,
        precision, recipe, threads). Returns the stored record (with its id and measurement time)."""
        if cal.device_kind not in schema.DEVICE_KINDS:
            raise StoreError(f"calibration device_kind {cal.device_kind!r}: use one of "
                             f"{', '.join(schema.DEVICE_KINDS)}")
        if not (cal.seconds_per_step > 0 and cal.flops_per_step > 0 and math.isfinite(cal.flops_per_s)):
            raise StoreError(f"calibration of {cal.family} {cal.shape_key}: seconds and FLOPs per step must be > 0 "
                             f"and finite, got {cal.seconds_per_step!r} s and {cal.flops_per_step!r} FLOPs")
        key = dict(device_name=cal.device_name, family=cal.family, shape_key=cal.shape_key, precision=cal.precision,
                   recipe=cal.recipe or "", threads=int(cal.threads))

        def unit(conn: Connection) -> CalibrationRecord:
            values = dict(key, device_kind=cal.device_kind, batch_size=int(cal.batch_size),
                          flops_per_step=float(cal.flops_per_step), seconds_per_step=float(cal.seconds_per_step),
                          steps=int(cal.steps), warmup=int(cal.warmup), host=cal.host,
                          torch_version=cal.torch_version, measured_at=cal.measured_at or self._now(conn))
            where = and_(*(CALIBRATIONS.c[k] == v for k, v in key.items()))
            conn.execute(delete(CALIBRATIONS).where(where))
            conn.execute(CALIBRATIONS.insert().values(**values))
            return calibration_record(conn.execute(select(CALIBRATIONS).where(where)).one())

        return self._unit(unit, what=f"saving a calibration of {cal.family} {cal.shape_key} on {cal.device_name}")

    def list_calibrations(self, device_kind: str | None = None,
                          device_name: str | None = None) -> list[CalibrationRecord]:
        """Stored calibrations, optionally of one device kind (``cpu``/``cuda``) or device name; ordered by
        device, family, shape key, precision."""
        conds = []
        if device_kind is not None:
            conds.append(CALIBRATIONS.c.device_kind == device_kind)
        if device_name is not None:
            conds.append(CALIBRATIONS.c.device_name == device_name)
        q = select(CALIBRATIONS).where(and_(*conds)) if conds else select(CALIBRATIONS)
        q = q.order_by(CALIBRATIONS.c.device_name, CALIBRATIONS.c.family, CALIBRATIONS.c.shape_key,
                       CALIBRATIONS.c.precision, CALIBRATIONS.c.recipe, CALIBRATIONS.c.threads)
        return self._unit(lambda conn: [calibration_record(r) for r in conn.execute(q)], write=False)
