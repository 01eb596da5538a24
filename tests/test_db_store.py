"""Store behaviour, on SQLite and PostgreSQL (see db_backends.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from db_backends import db_url_fixture  # noqa: F401  (the parametrised ``db_url`` fixture)
from db_helpers import delete_fits, find_run_by_hash, get_run_by_hash, metric_names, set_status

from ebt_scaling.db.store import ImportRow, Store
from ebt_scaling.errors import DuplicateError, NotFound, StoreError
from ebt_scaling.records import CalibrationRecord, FitRecord, MetricPoint, PlannedRun, RunResult


def planned(i: int, family: str = "ebt", axis: str = "depth", **kw) -> PlannedRun:
    return PlannedRun(family=family, axis=axis, x=float(2 ** i), seed=i % 2, config_hash=f"{family}-{axis}-{i:04d}",
                      config={"n_layer": 2 ** i, "lr": 1e-3}, **kw)


@pytest.fixture
def store(db_url):
    with Store(db_url) as s:
        yield s


def test_sweeps_get_or_create_and_axis_mismatch(store):
    a = store.create_sweep("depth-tiny", "depth", {"steps": 10, "bad": math.nan}, code_version="abc")
    b = store.create_sweep("depth-tiny", "depth", {"other": 1})
    assert a == b and a.spec["steps"] == 10 and math.isnan(a.spec["bad"]) and a.code_version == "abc"
    with pytest.raises(DuplicateError, match="already exists with axis 'depth'"):
        store.create_sweep("depth-tiny", "width")
    assert store.get_sweep("depth-tiny") == a
    store.create_sweep("width-tiny", "width")
    assert [s.name for s in store.list_sweeps()] == ["depth-tiny", "width-tiny"]
    with pytest.raises(NotFound, match="no sweep named 'nope'"):
        store.get_sweep("nope")
    with pytest.raises(StoreError, match="sweep name is empty"):
        store.create_sweep(" ", "depth")


def test_plan_runs_is_idempotent_and_keeps_input_order(store):
    store.create_sweep("s", "depth")
    first = store.plan_runs("s", [planned(i, params={"total": 100 * i}, flops_per_token={"paper": 6.0 * i})
                                  for i in (3, 1, 2)])
    assert [r.x for r in first] == [8.0, 2.0, 4.0]
    assert all(r.status == "planned" and r.attempts == 0 and r.source == "trained" for r in first)
    assert first[0].params == {"total": 300} and first[0].flops_per_token == {"paper": 18.0}
    assert first[0].config == {"n_layer": 8, "lr": 1e-3}
    store.mark_running(first[1].id)
    again = store.plan_runs("s", [planned(4), planned(1), planned(4)])
    assert again[1].id == first[1].id and again[1].status == "running"  # existing one as stored
    assert again[0].id == again[2].id and again[0].id not in {r.id for r in first}
    assert len(store.list_runs(sweep="s")) == 4
    assert store.plan_runs("s", []) == []
    with pytest.raises(NotFound):
        store.plan_runs("missing", [planned(9)])


def test_run_lifecycle_and_fit_eligibility(store):
    store.create_sweep("s", "depth")
    a, b, c, d = store.plan_runs("s", [planned(i) for i in range(4)])
    r = store.mark_running(a.id, host="node1", device="cpu")
    assert r.status == "running" and r.attempts == 1 and r.host == "node1" and r.started_at and r.heartbeat_at
    assert store.heartbeat_many([a.id]) == 1
    assert store.get_run(a.id).heartbeat_at >= r.heartbeat_at
    assert store.mark_running(a.id).attempts == 2
    assert store.heartbeat_many([a.id, b.id, 999999]) == 2 and store.heartbeat_many([]) == 0
    assert store.get_run(b.id).heartbeat_at is not None
    done = store.finish_run(a.id, "completed", result={
        "final_val_loss": 3.25, "final_train_loss": 3.0, "final_val_ppl": math.exp(3.25), "tokens": 1234,
        "params": {"total": 10, "non_embedding": 6}, "flops_per_token": {"paper": 60.0, "exact": 71.5},
        "checkpoint_dir": "/ck/a", "device": "cuda:0"})
    assert done.status == "completed" and done.fit_eligible and done.final_val_loss == 3.25
    assert done.tokens == 1234 and done.params == {"total": 10, "non_embedding": 6} and done.device == "cuda:0"
    assert done.flops_per_token == {"paper": 60.0, "exact": 71.5} and done.checkpoint_dir == "/ck/a"
    assert done.finished_at is not None and done.host == "node1"
    # completed but NaN loss: not eligible, NaN not stored as a final value
    nan_run = store.finish_run(b.id, "completed", result={"final_val_loss": math.nan})
    assert not nan_run.fit_eligible and nan_run.final_val_loss is None
    failed = store.finish_run(c.id, "diverged", reason="loss became inf at step 7",
                              result={"final_val_loss": 4.0})
    assert failed.status == "diverged" and not failed.fit_eligible and failed.reason.startswith("loss became inf")
    # a RunResult as a dict works; steps, wall time and numeric extras become summary metrics
    rr = RunResult(status="completed", steps=5, tokens=640, final_train_loss=2.0, final_val_loss=2.5,
                   final_val_ppl=12.18, wall_time_s=1.5, params={"total": 3}, extra={"val_energy_gap": 0.25,
                                                                                      "note": "x"})
    e = store.finish_run(d.id, "completed", result=dataclasses.asdict(rr))
    assert e.fit_eligible and e.extra_metrics == {"steps": 5.0, "wall_time_s": 1.5, "val_energy_gap": 0.25}
    with pytest.raises(StoreError, match="not terminal"):
        store.finish_run(a.id, "running")
    with pytest.raises(NotFound, match="no run with id 999999"):
        store.finish_run(999999, "failed")
    with pytest.raises(NotFound):
        store.mark_running(999999)
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.status = "planned"  # records are frozen


def test_reset_interrupted_checkpoint_and_status(store):
    store.create_sweep("s", "depth")
    store.create_sweep("t", "depth")
    runs = store.plan_runs("s", [planned(i) for i in range(3)])
    other = store.plan_runs("t", [planned(7)])[0]
    store.mark_running(runs[0].id)
    store.mark_running(runs[1].id)
    store.mark_running(other.id)
    store.finish_run(runs[1].id, "completed", result={"final_val_loss": 1.0})
    store.set_checkpoint(runs[0].id, "/ckpt/run0/step_100")
    assert store.reset_interrupted("s") == 1
    r0 = store.get_run(runs[0].id)
    assert r0.status == "planned" and r0.attempts == 1 and r0.checkpoint_dir == "/ckpt/run0/step_100"
    assert store.get_run(other.id).status == "running"  # other sweep untouched
    assert store.get_run(runs[1].id).status == "completed"
    assert set_status(store, runs[2].id, "cancelled", reason="user").status == "cancelled"
    with pytest.raises(StoreError, match="unknown run status"):
        set_status(store, runs[2].id, "paused")


def test_metrics_nonfinite_idempotent_ordered_and_truncated(store):
    store.create_sweep("s", "depth")
    a, b = store.plan_runs("s", [planned(0), planned(1)])
    pts = [MetricPoint("val_loss", s, 5.0 - s) for s in (10, 0, 5)] + [
        MetricPoint("train_loss", 1, math.nan), MetricPoint("train_loss", 2, math.inf),
        MetricPoint("train_loss", 3, -math.inf), MetricPoint("think_ppl/steps=3/samples=1/split=ood", 0, 17.5)]
    assert store.log_metrics(a.id, pts) == 7
    got = store.get_metrics(a.id)
    assert [(p.name, p.step) for p in got] == [
        ("think_ppl/steps=3/samples=1/split=ood", 0), ("train_loss", 1), ("train_loss", 2), ("train_loss", 3),
        ("val_loss", 0), ("val_loss", 5), ("val_loss", 10)]
    tl = store.get_metrics(a.id, "train_loss")
    assert math.isnan(tl[0].value) and tl[1].value == math.inf and tl[2].value == -math.inf
    assert [p.kind for p in tl] == ["nan", "inf", "-inf"]
    # re-logging the same (name, step) replaces the value, never duplicates
    store.log_metrics(a.id, [MetricPoint("val_loss", 5, 0.5), MetricPoint("val_loss", 5, 0.25)])
    assert store.count_metrics(a.id) == 7
    assert [p.value for p in store.get_metrics(a.id, "val_loss")] == [5.0, 0.25, -5.0]
    store.log_metrics_many({a.id: [MetricPoint("lr", 1, 1e-3)], b.id: [MetricPoint("lr", 1, 2e-3)] * 3})
    assert store.get_metrics(b.id) == [MetricPoint("lr", 1, 2e-3)]
    assert store.final_metrics([a.id, b.id], "val_loss") == {a.id: MetricPoint("val_loss", 10, -5.0)}
    assert metric_names(store, a.id, prefix="think_ppl/") == ["think_ppl/steps=3/samples=1/split=ood"]
    # a restart from the checkpoint at step 5 drops later points
    assert store.truncate_metrics(a.id, after_step=5) == 1
    assert [p.step for p in store.get_metrics(a.id, "val_loss")] == [0, 5]
    assert store.truncate_metrics(a.id, after_step=-1) == 7  # restart from scratch (incl. the lr point)
    assert store.get_metrics(a.id) == [] and store.count_metrics(b.id) == 1
    assert store.log_metrics(a.id, []) == 0
    with pytest.raises(NotFound, match="does not exist"):
        store.log_metrics(424242, [MetricPoint("val_loss", 1, 1.0)])
    assert store.count_metrics() == 1  # the failed batch wrote nothing


def test_list_runs_filters_and_lookup_by_hash(store):
    store.create_sweep("d", "depth")
    store.create_sweep("w", "width")
    d = store.plan_runs("d", [planned(i, family=f) for i, f in enumerate(["ebt", "transformer_pp", "ebt"])])
    w = store.plan_runs("w", [planned(i, axis="width") for i in range(2)])
    store.mark_running(d[0].id)
    store.finish_run(d[2].id, "completed", result={"final_val_loss": 2.0})
    assert [r.id for r in store.list_runs()] == [r.id for r in d + w]
    assert [r.id for r in store.list_runs(sweep="d", family="ebt")] == [d[0].id, d[2].id]
    assert [r.id for r in store.list_runs(axis="width")] == [r.id for r in w]
    assert [r.id for r in store.list_runs(status="running")] == [d[0].id]
    assert [r.id for r in store.list_runs(status=["running", "completed"])] == [d[0].id, d[2].id]
    assert [r.id for r in store.list_runs(fit_eligible=True)] == [d[2].id]
    assert store.list_runs(sweep="none") == []
    with pytest.raises(StoreError, match="unknown run status"):
        store.list_runs(status="done")
    assert get_run_by_hash(store, d[1].config_hash).id == d[1].id
    assert find_run_by_hash(store, "nope") is None
    with pytest.raises(NotFound):
        get_run_by_hash(store, "nope")


def test_fits_link_exact_runs(store):
    store.create_sweep("s", "depth")
    runs = store.plan_runs("s", [planned(i) for i in range(3)])
    fit = FitRecord(id=None, sweep="s", axis="depth", family="ebt", method="ols_log_ppl",
                    params={"slope": -0.1, "ci": [-0.2, math.inf], "n": 3}, run_ids=(runs[2].id, runs[0].id),
                    fingerprint="fp1")
    saved = store.save_fit(fit)
    assert saved.id is not None and saved.created_at is not None
    assert saved.run_ids == (runs[0].id, runs[2].id) and saved.params["ci"][1] == math.inf
    assert store.find_fit("s", "depth", "ebt", "ols_log_ppl", "fp1") == saved
    assert store.find_fit("s", "depth", "ebt", "ols_log_ppl", "fp2") is None
    with pytest.raises(DuplicateError):
        store.save_fit(fit)
    replaced = store.save_fit(dataclasses.replace(fit, run_ids=(runs[1].id,)), replace=True)
    assert replaced.run_ids == (runs[1].id,) and len(store.list_fits()) == 1
    store.save_fit(dataclasses.replace(fit, axis="width", fingerprint="fp3"))
    assert [f.axis for f in store.list_fits(sweep="s")] == ["depth", "width"]
    assert [f.axis for f in store.list_fits(axis="width")] == ["width"]
    with pytest.raises(NotFound):
        store.save_fit(dataclasses.replace(fit, fingerprint="fp4", run_ids=(987654,)))
    assert len(store.list_fits()) == 2  # the failed save left nothing behind
    with pytest.raises(NotFound):
        store.save_fit(dataclasses.replace(fit, sweep="other"))
    assert delete_fits(store, "s", axis="width") == 1
    assert delete_fits(store, "s") == 1 and store.list_fits() == []


def test_import_rows_and_dataframes(store):
    rows = [ImportRow(line=2, family="ebt", axis="width", x=64.0, seed=0, val_loss=3.0, extra=(("acc", 0.5),)),
            ImportRow(line=3, family="transformer_pp", axis="width", x=128.0, seed=0, val_loss=2.5, tokens=1000)]
    first = store.import_rows("imp", rows, source_name="a.csv")
    assert (first.created, first.updated) == (2, 0)
    again = store.import_rows("imp", rows, source_name="a.csv")
    assert (again.created, again.updated) == (0, 2)
    runs = store.list_runs(sweep="imp")
    assert len(runs) == 2 and all(r.source == "imported" and r.fit_eligible and r.status == "completed"
                                  for r in runs)
    assert runs[0].extra_metrics == {"acc": 0.5} and runs[1].tokens == 1000
    assert runs[0].final_val_ppl == pytest.approx(math.exp(3.0))
    # a corrected value replaces the stored one
    store.import_rows("imp", [dataclasses.replace(rows[0], val_loss=2.9, extra=())])
    assert store.get_run(runs[0].id).final_val_loss == 2.9 and store.get_run(runs[0].id).extra_metrics == {}
    assert store.get_sweep("imp").axis == "width"
    with pytest.raises(StoreError, match="has axis 'width'"):
        store.import_rows("imp", [dataclasses.replace(rows[0], axis="depth")])
    df = store.runs_dataframe(sweep="imp")
    assert list(df["run_id"]) == [r.id for r in runs] and "final_val_loss" in df.columns
    empty = store.runs_dataframe(sweep="none")
    assert len(empty) == 0 and "final_val_loss" in empty.columns
    store.log_metrics(runs[0].id, [MetricPoint("val_loss", 1, math.nan), MetricPoint("val_loss", 2, 1.0)])
    mdf = store.metrics_dataframe(sweep="imp")
    assert list(mdf["step"]) == [1, 2] and math.isnan(mdf["value"][0])
    keyed = store.import_rows("imp", [dataclasses.replace(rows[0], key="ebt_s2")])  # same point, other recipe
    assert (keyed.created, keyed.updated) == (1, 0) and len(store.list_runs(sweep="imp")) == 3


def test_store_masks_password_and_rejects_bad_urls(tmp_path):
    with pytest.raises(StoreError) as e:
        Store("postgresql+psycopg://user:Sup3rS3cret@127.0.0.1:1/nodb")
    assert "Sup3rS3cret" not in str(e.value) and "***" in str(e.value)
    with pytest.raises(StoreError, match="unsupported database"):
        Store("mysql://u:p@h/db")
    with pytest.raises(StoreError, match="directory .* does not exist"):
        Store(f"sqlite:///{tmp_path}/missing/dir/x.db")
    s = Store(f"sqlite:///{tmp_path}/x.db")
    assert s.url.endswith("x.db") and "Store(" in repr(s)
    s.close()
    mem = Store("sqlite://")
    mem.create_sweep("m", "data")
    assert mem.get_sweep("m").axis == "data"
    mem.close()


def test_a_sweep_planned_under_hash_version_1_keeps_its_transformer_pp_runs(store):
    """A T++ run planned before EBT fields left its hash (hash version 1) is found by its old hash when the sweep
    is planned again, and reused, instead of being planned (and trained) a second time."""
    from ebt_scaling.sweeps import expand, parse_spec
    from ebt_scaling.sweeps.expand import keep_stored_hash_versions

    raw = {"sweep": {"name": "hv", "axis": "depth"}, "model": {"preset": "nano"},
           "data": {"source": "synthetic", "vocab_size": 64}, "axis": {"values": [1, 2]}}
    runs = expand(parse_spec(raw))
    legacy = []
    for r in runs:  # what an older version planned: every run hashed by version 1
        spec = r.spec.with_(hash_version=1)
        legacy.append(dataclasses.replace(r.planned, config_hash=spec.config_hash,
                                          config={**r.planned.config, "hash_version": 1}))
    store.create_sweep("hv", "depth", {}, "test")
    old = store.plan_runs("hv", legacy)
    kept = keep_stored_hash_versions(runs, store.stored_hashes)
    again = store.plan_runs("hv", [r.planned for r in kept])
    assert [r.id for r in again] == [r.id for r in old]  # nothing new planned
    assert len(store.list_runs(sweep="hv")) == len(runs)
    for r, k in zip(runs, kept, strict=True):
        assert k.config_hash == k.spec.config_hash
        assert (k.config_hash == r.config_hash) == (r.spec.family == "ebt")  # only the T++ hashes moved
    assert keep_stored_hash_versions(runs, lambda hashes: set()) == runs  # a fresh database: new hashes


def test_loss_curves_for_the_report_read_every_trained_run_in_one_pass(store):
    from ebt_scaling.cli.report import loss_curves
    from ebt_scaling.records import MetricPoint, PlannedRun

    store.create_sweep("lc", "depth", {}, "test")
    cfg = {"train": {"batch_size": 4}, "model": {"sequence_len": 16}}
    a, b = store.plan_runs("lc", [PlannedRun(family="ebt", axis="depth", x=float(i), seed=0, config_hash=f"lc{i}",
                                             config=cfg, params={}, flops_per_token={}, tokens=640)
                                  for i in (1, 2)])
    store.log_metrics(a.id, [MetricPoint("train_loss", s, 6.0 - s / 10) for s in (0, 5, 10)]
                      + [MetricPoint("val_loss", 10, 5.5), MetricPoint("val_loss", 5, float("nan")),
                         MetricPoint("lr", 5, 1e-3)])
    curves = loss_curves(store, store.list_runs(sweep="lc"))
    assert set(curves) == {a.id}  # b has no series
    assert curves[a.id]["train_loss"] == ([320, 640], [5.5, 5.0])  # tokens = step x 4 x 16; step 0 is off a log axis
    assert curves[a.id]["val_loss"] == ([640], [5.5])  # a non-finite point is not drawn
    assert set(store.metric_series([a.id, b.id], ["lr"])) == {a.id}


def test_calibrations_replace_per_key_and_come_back_as_records(store):
    cal = CalibrationRecord(device_kind="cuda", device_name="NVIDIA H200", family="ebt", shape_key="L12-D768-B32",
                            precision="tf32", recipe="ebt_s1", threads=0, batch_size=32, flops_per_step=6e14,
                            seconds_per_step=2.0, steps=3, warmup=2, host="node1", torch_version="2.13.0")
    first = store.save_calibration(cal)
    assert first.id is not None and first.measured_at is not None and first.flops_per_s == 3e14
    assert dataclasses.replace(first, id=None, measured_at=None) == cal
    tpp = store.save_calibration(dataclasses.replace(cal, family="transformer_pp", recipe=None, seconds_per_step=1.0))
    assert tpp.recipe is None
    again = store.save_calibration(dataclasses.replace(cal, seconds_per_step=1.5))  # the same key: replaced
    cpu = store.save_calibration(dataclasses.replace(cal, device_kind="cpu", device_name="Some CPU", threads=1))
    got = store.list_calibrations()
    assert [(c.device_name, c.family, c.seconds_per_step) for c in got] == [
        ("NVIDIA H200", "ebt", 1.5), ("NVIDIA H200", "transformer_pp", 1.0), ("Some CPU", "ebt", 2.0)]
    assert all(isinstance(c, CalibrationRecord) for c in got) and again.flops_per_s == 4e14
    assert store.list_calibrations(device_kind="cpu") == [cpu]
    assert [c.family for c in store.list_calibrations(device_name="NVIDIA H200")] == ["ebt", "transformer_pp"]
    with pytest.raises(StoreError, match="must be > 0"):
        store.save_calibration(dataclasses.replace(cal, seconds_per_step=0.0))
    with pytest.raises(StoreError, match="device_kind 'tpu'"):
        store.save_calibration(dataclasses.replace(cal, device_kind="tpu"))


def test_a_sqlite_database_uses_the_two_lock_files_that_lock_files_names(tmp_path):
    """``lock_files`` names the files the init lock and the writers' queue use (the test session removes them
    by that name at its end, conftest.py): created by a write, nothing else of the database's in the temp
    directory, and a symlinked path names the same files as the file it points to."""
    import os

    from ebt_scaling.db.engine import lock_files

    db = tmp_path / "l.db"
    init, writer = lock_files(db.resolve())
    with Store(f"sqlite:///{db}") as st:
        st.create_sweep("a", "depth")
        assert os.path.isfile(init) and os.path.isfile(writer)
        assert os.path.basename(init).startswith("ebt-scale-") and writer == init[:-len(".lock")] + ".writer.lock"
    (tmp_path / "link.db").symlink_to(db)
    assert lock_files((tmp_path / "link.db").resolve()) == (init, writer)
    for f in (init, writer):
        os.unlink(f)
    with Store(f"sqlite:///{tmp_path / 'link.db'}") as st:  # the same database through the link: the same queue
        st.create_sweep("b", "depth")  # (the schema exists: no init lock this time)
        assert os.path.isfile(writer) and not os.path.exists(init)
