"""Sweeps on a real local Ray instance with the real training loop and the real results database.

Each test starts (and stops) its own local Ray; drivers run as subprocesses where a test kills them.
Leftover Ray processes are killed by PID (``cleanup_leftover_ray``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebt_scaling.sched.runner import _procs_using, cleanup_leftover_ray, driver_temp_dirs
from ebt_scaling.sched.trainable import checkpoint_info

# These tests need the training loop and the database package (built on their own branches).
pytest.importorskip("ebt_scaling.train.loop", reason="the training loop (ebt_scaling.train.loop) is not here yet")
if not hasattr(__import__("ebt_scaling.db", fromlist=["Store"]), "Store"):
    pytest.skip("the results database (ebt_scaling.db.Store) is not here yet", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
[sweep]
name = "{name}"
axis = "depth"
families = {families}
seeds = [0]

[model]
preset = "nano"
sequence_len = 32

[train]
steps = {steps}
batch_size = 4
warmup_steps = 2
log_interval = 5
eval_interval = 20
eval_batches = 2
checkpoint_interval = 20
{train_extra}

[data]
source = "{source}"
vocab_size = 64

[resources]
cpus_per_trial = 1
max_retries = 1

[axis]
values = {values}
"""


def write_spec(tmp_path: Path, name: str = "t", *, families: str = '["ebt", "transformer_pp"]', steps: int = 40,
               values: str = "[1, 2]", train_extra: str = "", source: str = "synthetic") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(SPEC.format(name=name, families=families, steps=steps, values=values, train_extra=train_extra,
                             source=source))
    return p


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebt_scaling", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ebt_scaling", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)


@pytest.fixture(autouse=True)
def _no_leftover_ray():
    yield
    cleanup_leftover_ray()


def store(url: str):
    from ebt_scaling.db import Store

    return Store(url)


def assert_contiguous(st, run, log_interval: int = 5) -> None:
    """One train_loss point every log_interval steps from the first to the last step, none twice."""
    steps = [p.step for p in st.get_metrics(run.id, "train_loss")]
    total = run.config["train"]["steps"]
    assert steps == list(range(log_interval, total + 1, log_interval)), (run.id, steps)


@pytest.mark.slow  # the kill -9 test below covers the same path (both families, rerun) in the default suite
def test_local_sweep_end_to_end_and_rerun_skips(tmp_path):
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    spec = write_spec(tmp_path, "e2e")
    r = cli("sweep", "--spec", str(spec), "--db", url, "--progress", "plain")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sweep e2e: 4 completed" in r.stdout
    assert "done 4/4" in r.stderr
    st = store(url)
    runs = st.list_runs(sweep="e2e")
    assert len(runs) == 4 and {x.family for x in runs} == {"ebt", "transformer_pp"}
    for run in runs:
        assert run.status == "completed" and run.attempts == 1 and run.fit_eligible
        assert run.final_val_loss is not None and run.final_val_loss > 0
        assert_contiguous(st, run)
        assert [p.step for p in st.get_metrics(run.id, "val_loss")] == [20, 40]
        ck = Path(run.checkpoint_dir)
        assert ck.is_dir() and (ck / "model.pt").exists() and str(ck).startswith(str(tmp_path / "e2e.runs"))
        assert json.loads((ck / "ebt_checkpoint.json").read_text())["step"] == 40
        assert run.host and run.device == "cpu"
    # The same command again: nothing to run, Ray is not even started.
    t0 = time.monotonic()
    r = cli("sweep", "--spec", str(spec), "--db", url, "--progress", "plain")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 already completed" in r.stderr and "0 to run" in r.stderr and "Ray:" not in r.stderr
    assert time.monotonic() - t0 < 30
    assert [x.attempts for x in st.list_runs(sweep="e2e")] == [1, 1, 1, 1]


def test_raising_and_diverging_runs_are_recorded_and_retried(tmp_path, caplog):
    """One run raises (its corpus does not exist), one diverges, two are fine: the diverging one is retried
    max_retries times, from its latest checkpoint (step 2: a retry inside the sweep resumes from Ray's checkpoint,
    sched/trainable.py), the bad data fails once (it would repeat); both are recorded with their reason; the
    others complete."""
    from ebt_scaling.sched.runner import RayOptions
    from ebt_scaling.sched.service import run_sweep
    from ebt_scaling.sweeps import load_spec

    url = f"sqlite:///{tmp_path / 'fail.db'}"
    st = store(url)
    good = load_spec(write_spec(tmp_path, "mixed", families='["transformer_pp"]', values="[1, 2]"))
    bad_data = load_spec(write_spec(tmp_path, "raise", families='["transformer_pp"]', values="[1]",
                                    source=f"text:{tmp_path / 'missing'}"))
    div_file = write_spec(tmp_path, "div", families='["transformer_pp"]', values="[1]",
                          train_extra="divergence_factor = 0.5")
    div_file.write_text(div_file.read_text().replace("checkpoint_interval = 20", "checkpoint_interval = 2"))
    diverge = load_spec(div_file)
    # One sweep, one Tuner: the four runs of the three specs planned under the sweep "mixed".
    from ebt_scaling.sweeps import expand

    runs = expand(good) + expand(bad_data.with_(name="mixed")) + expand(diverge.with_(name="mixed"))
    assert len({r.config_hash for r in runs}) == 4
    opts = RayOptions(cpus_per_trial=1, max_retries=1, storage_path=str(tmp_path / "runs"), progress="plain")
    caplog.set_level("INFO", logger="ebt_scaling.sched.progress")

    out = run_sweep(good, st, opts, runs=runs)
    by_hash = {r.config_hash: r for r in st.list_runs(sweep="mixed")}
    assert out.statuses == {"completed": 2, "failed": 1, "diverged": 1}
    raised = by_hash[expand(bad_data)[0].config_hash]
    # bad data would fail again: failed once, not retried (issue 30); a divergence is retried
    assert raised.status == "failed" and raised.attempts == 1 and not raised.fit_eligible
    assert "DataError" in raised.reason or "missing" in raised.reason, raised.reason
    div = by_hash[expand(diverge)[0].config_hash]
    assert div.status == "diverged" and div.attempts == 2 and not div.fit_eligible
    assert "exceeds 0.5 x the initial loss" in div.reason, div.reason
    steps = [p.step for p in st.get_metrics(div.id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 3  # the diverging step is logged once
    assert checkpoint_info(div.checkpoint_dir)["step"] == 2  # checkpointed before it diverged at step 3 ...
    said = [r.getMessage() for r in caplog.records if r.name == "ebt_scaling.sched.progress"]  # --progress plain
    assert any(re.fullmatch(rf"run {div.id} failed \(.*\); retrying from step 2", m, re.S) for m in said), said
    for h in (expand(good)[0].config_hash, expand(good)[1].config_hash):
        assert by_hash[h].status == "completed" and by_hash[h].attempts == 1
        assert_contiguous(st, by_hash[h])


def _wait_for(pred, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    t0 = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited early ({proc.returncode}) waiting for {what}: {proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _statuses(url: str, sweep: str) -> list[str]:
    try:
        return [r.status for r in store(url).list_runs(sweep=sweep)]
    except Exception:  # the driver may not have created the schema yet
        return []


def test_kill_dash_9_then_rerun_completes_every_run_exactly_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    spec = write_spec(tmp_path, "kill", steps=120, values="[1]")
    # Two at a time on any machine: a run still starts after the first one completes, so the kill can land
    # while a checkpointed run is at most halfway (a run that finished between the poll and the kill would have
    # nothing left to resume).
    args = ("sweep", "--spec", str(spec), "--db", url, "--progress", "plain", "--seeds", "2", "--max-concurrent", "2")

    def early_step(r) -> bool:  # a checkpoint at most halfway: the run cannot finish before the kill lands
        info = checkpoint_info(r.checkpoint_dir) if r.checkpoint_dir else None
        return info is not None and info["step"] <= 60

    def first_done_and_one_checkpointed() -> bool:
        try:
            runs = store(url).list_runs(sweep="kill")
        except Exception:  # the driver may not have created the schema yet
            return False
        return (any(r.status == "completed" for r in runs)
                and any(r.status == "running" and early_step(r) for r in runs))

    drv = start_cli(*args)
    try:
        _wait_for(first_done_and_one_checkpointed, 240, drv, "the first completed run")
        from typer.testing import CliRunner

        from ebt_scaling.cli.main import app

        live_status = CliRunner().invoke(app, ["status", "--sweep", "kill", "--json", "--db", url])
        live_sweeps = CliRunner().invoke(app, ["sweeps", "--json", "--db", url])
        os.kill(drv.pid, signal.SIGKILL)
        drv.wait(30)
    finally:
        if drv.poll() is None:
            drv.kill()
        drv.stdout.close()
    # While the driver ran, `ebt-scale status` and `ebt-scale sweeps` (another process's view, from the
    # database alone) showed its progress and the driver holding the sweep.
    assert live_status.exit_code == 0, live_status.output
    (snap,) = json.loads(live_status.output)
    assert snap["sweep"] == "kill" and snap["runs"] == 4 and snap["done"] >= 1 and snap["running"] >= 1
    assert snap["lease"]["pid"] == drv.pid and not snap["finished"]
    running = [r for r in snap["runs_detail"] if r["status"] == "running" and r["step"] > 0]
    # (a run at its last step, not yet recorded completed, has nothing left: ETA 0)
    assert running and all(r["steps"] == 120 and r["tokens_per_s"] > 0 and r["train_loss"]
                           and (r["eta_s"] > 0 if r["step"] < 120 else r["eta_s"] == 0) for r in running), running
    assert snap["eta_s"] and snap["eta_s"] > 0
    (listed,) = json.loads(live_sweeps.output)
    assert listed["sweep"] == "kill" and listed["driver"]["pid"] == drv.pid and sum(listed["runs"].values()) == 4
    st = store(url)
    before = {r.config_hash: r for r in st.list_runs(sweep="kill")}
    done_before = {h for h, r in before.items() if r.status == "completed"}
    assert done_before and len(before) == 4
    assert any(r.status == "running" for r in before.values())  # the kill left runs behind
    checkpointed = [h for h, r in before.items()
                    if r.status != "completed" and r.checkpoint_dir and checkpoint_info(r.checkpoint_dir)]
    assert checkpointed  # each of them must resume, not restart
    leftover_dirs = driver_temp_dirs(drv.pid)
    assert len(leftover_dirs) == 1 and (leftover_dirs[0].stat().st_mode & 0o777) == 0o700
    leftovers = _procs_using(str(leftover_dirs[0]))  # Ray processes of the killed driver (may still run)

    r = cli(*args, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(done_before)} already completed" in r.stderr
    resumed = int(r.stderr.split(" resuming from a checkpoint")[0].rsplit("(", 1)[1])
    assert resumed == len(checkpointed), r.stderr
    for pid in leftovers:  # the rerun cleaned up the killed driver's Ray processes
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    after = st.list_runs(sweep="kill")
    assert len(after) == 4 and all(x.status == "completed" for x in after)
    done = CliRunner().invoke(app, ["status", "--sweep", "kill", "--watch", "--db", url])  # nothing to wait for
    assert done.exit_code == 0 and "4/4 done" in done.output and "no live driver" in done.output, done.output
    assert {x.family for x in after} == {"ebt", "transformer_pp"}
    for run in after:
        assert_contiguous(st, run)
        assert [p.step for p in st.get_metrics(run.id, "val_loss")] == list(range(20, 121, 20))
        if run.config_hash in done_before:
            assert run.attempts == 1  # completed before the kill: never trained again
        ck = Path(run.checkpoint_dir)  # the durable checkpoint in Ray's storage, next to the database
        assert (tmp_path / "kill.runs").stat().st_mode & 0o777 == 0o700  # results: private
        assert (ck / "model.pt").exists() and str(ck).startswith(str(tmp_path / "kill.runs"))
        assert json.loads((ck / "ebt_checkpoint.json").read_text())["step"] == 120
        assert run.fit_eligible and run.host and run.device == "cpu"
    # `ebt-scale runs --format json` lists each run once, completed.
    j = CliRunner().invoke(app, ["runs", "--sweep", "kill", "--format", "json", "--db", url])
    assert j.exit_code == 0, j.output
    rows = json.loads(j.stdout)
    assert len(rows) == 4 and len({x["config_hash"] for x in rows}) == 4
    assert {x["status"] for x in rows} == {"completed"}
    # And once more: nothing left to run, Ray is not even started.
    r = cli(*args)
    assert r.returncode == 0 and "4 already completed" in r.stderr and "Ray:" not in r.stderr, r.stderr
    assert [x.attempts for x in st.list_runs(sweep="kill")] == [x.attempts for x in after]


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True], ids=["driver", "terminal-group"])
def test_ctrl_c_marks_runs_cancelled_and_a_rerun_continues(tmp_path, group):
    url = f"sqlite:///{tmp_path / 'int.db'}"
    spec = write_spec(tmp_path, "int", families='["transformer_pp"]', steps=300, values="[1, 2, 3]")
    args = ("sweep", "--spec", str(spec), "--db", url, "--progress", "plain")
    drv = subprocess.Popen([sys.executable, "-m", "ebt_scaling", *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=group)
    try:
        _wait_for(lambda: "running" in _statuses(url, "int"), 240, drv, "a running run")
        time.sleep(1.0)
        if group:  # like Ctrl-C in a terminal: the driver's whole process group gets SIGINT
            os.killpg(drv.pid, signal.SIGINT)
        else:
            drv.send_signal(signal.SIGINT)
        out, _ = drv.communicate(timeout=120)
    finally:
        if drv.poll() is None:
            drv.kill()
    assert drv.returncode == 130, out
    sts = _statuses(url, "int")
    assert "cancelled" in sts and "running" not in sts, sts
    r = cli(*args, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    st = store(url)
    for run in st.list_runs(sweep="int"):
        assert run.status == "completed"
        assert_contiguous(st, run)


def _own_pg_server() -> tuple[str, str] | None:
    """(folder, URL) of a PostgreSQL server of the test's own, which it may stop and restart; None where none can
    be started here (needs root and a PostgreSQL installation: scripts/pg-temp.sh)."""
    import shutil

    if os.getuid() != 0 or not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or not shutil.which("runuser"):
        return None
    out = subprocess.run(["bash", str(ROOT / "scripts" / "pg-temp.sh")], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        import warnings

        warnings.warn(f"could not start a PostgreSQL server: {out.stderr.strip()[-200:]}", stacklevel=1)
        return None
    folder, url = out.stdout.split()
    return folder, url


def _pg_ctl(folder: str, *args: str) -> None:
    pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
    subprocess.run(["runuser", "-u", "postgres", "--", str(pg_ctl), "-D", f"{folder}/data", "-w", "-t", "60", *args],
                   check=True, capture_output=True, timeout=90)


def test_callback_keeps_buffered_points_until_a_write_commits():
    from ebt_scaling.records import MetricPoint
    from ebt_scaling.sched.callback import SweepCallback

    class FlakySink:  # the driver-side sink protocol; the first write fails as a lost database would
        def __init__(self) -> None:
            self.calls, self.stored = 0, []

        def metrics(self, batch):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("database went away")
            self.stored += [(rid, p.step) for rid, pts in batch.items() for p in pts]

        def heartbeat(self, run_ids):
            pass

    sink = FlakySink()
    cb = SweepCallback(sink, [{"run_id": 7, "spec": {"train": {"steps": 10}}}])
    cb._buf[7] += [MetricPoint("train_loss", s, 1.0) for s in (1, 2)]
    with pytest.raises(RuntimeError):
        cb.flush()
    cb._buf[7].append(MetricPoint("train_loss", 3, 1.0))  # arrives while the database is away
    cb.flush()
    assert sink.stored == [(7, 1), (7, 2), (7, 3)] and not cb._buf[7]


def test_a_run_with_holes_in_its_series_is_never_recorded_completed(tmp_path):
    """The driver's sink checks the stored train_loss series before it records `completed`."""
    from ebt_scaling.records import MetricPoint, PlannedRun
    from ebt_scaling.sched.service import StoreSink

    st = store(f"sqlite:///{tmp_path / 'h.db'}")
    st.create_sweep("h", "depth")
    cfg = {"train": {"steps": 20, "log_interval": 5}}
    a, b = st.plan_runs("h", [PlannedRun(family="ebt", axis="depth", x=float(i), seed=0, config_hash=f"h{i}",
                                         config=cfg) for i in (1, 2)])
    sink = StoreSink(st)
    for rec, steps in ((a, (5, 10, 15, 20)), (b, (5, 15, 20))):  # b lost step 10 (e.g. a second driver's reset)
        sink.started(rec.id, "host", "cpu")
        sink.metrics({rec.id: [MetricPoint("train_loss", s, 1.0) for s in steps]})
        sink.finished(rec.id, "completed", None, {"final_val_loss": 1.0})
    a, b = st.get_run(a.id), st.get_run(b.id)
    assert a.status == "completed" and a.fit_eligible
    assert b.status == "failed" and not b.fit_eligible
    assert "1 train_loss point(s) missing (first at step 10)" in b.reason


@pytest.mark.parametrize("rerun", ["planned", pytest.param("completed", marks=pytest.mark.slow)])
def test_cancel_from_another_terminal_stops_the_driver_and_a_rerun_resumes(tmp_path, rerun):
    """`ebt-scale cancel` sets a flag in the database; the live driver stops its trials, marks the unfinished
    runs cancelled (checkpoints kept) and exits; the same sweep command then resumes them. The runs are long
    (2,000 steps, about 12 s each on the 2-core build machine; at 400 a run could finish between its first
    checkpoint and the driver's cancel poll, every 2 s, on a quiet machine) and the cancel is sent once both have
    a checkpoint; should one run still finish first, the test holds the driver to its own count (at least one
    cancelled, every cancelled one resumed from its checkpoint).

    Default suite (``planned``): the rerun clears the cancellation and plans every cancelled run to resume from
    its checkpoint, then gets Ctrl-C before it trains (a resumed run trained to the end: the kill -9 test;
    training the rest of ~2 x 1,900 steps here would add ~20 s). Slow (``completed``): the rerun completes them."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    spec = write_spec(tmp_path, "c", families='["transformer_pp"]', steps=2000, values="[1, 2]")
    args = ("sweep", "--spec", str(spec), "--db", url, "--progress", "plain")
    from typer.testing import CliRunner

    from ebt_scaling.cli.main import app

    def cancel(*extra: str):  # `ebt-scale cancel` in this process (another terminal's view: the database alone)
        return CliRunner().invoke(app, ["cancel", "--sweep", "c", "--db", url, *extra])

    r = cancel()  # no database yet: nothing created
    assert r.exit_code == 1 and "does not exist" in r.stderr and not (tmp_path / "c.db").exists()
    drv = start_cli(*args)
    try:
        def checkpointed() -> bool:
            try:
                runs = store(url).list_runs(sweep="c")
            except Exception:
                return False
            return len(runs) == 2 and all(x.status == "running" and x.checkpoint_dir for x in runs)

        _wait_for(checkpointed, 240, drv, "two running runs with a checkpoint")
        r = cancel("--wait", "120")
        out, _ = drv.communicate(timeout=120)
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()
    assert r.exit_code == 0, r.output
    said = re.search(r"sweep 'c' stopped: (\d+) cancelled", r.stdout)
    assert f"(pid {drv.pid} on " in r.stderr and said, r.stdout + r.stderr
    assert drv.returncode == 130, out  # the driver exits as after Ctrl-C
    runs = store(url).list_runs(sweep="c")
    cancelled = [x for x in runs if x.status == "cancelled"]
    assert len(cancelled) == int(said.group(1)) >= 1 and all(x.status in ("cancelled", "completed") for x in runs)
    assert all("ebt-scale cancel" in x.reason and x.checkpoint_dir for x in cancelled)
    r = cancel()
    assert r.exit_code == 1 and "has no live driver" in r.stderr
    n = len(cancelled)
    plan = f"{n} to run ({n} resuming from a checkpoint)"
    if rerun == "planned":
        assert store(url).cancel_requested("c")  # the request outlives the driver it stopped ...
        drv = start_cli(*args)
        try:
            lines = []
            for line in drv.stdout:  # the driver's plan, said before Ray starts
                lines.append(line)
                if " to run (" in line:
                    break
            drv.send_signal(signal.SIGINT)
            out = "".join(lines) + drv.communicate(timeout=120)[0]
        finally:
            if drv.poll() is None:
                drv.kill()
                drv.wait()
        assert plan in out and drv.returncode == 130, out
        assert not store(url).cancel_requested("c")  # ... until the next driver of the sweep starts
        return
    r = cli(*args, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert plan in r.stderr, r.stderr
    st = store(url)
    for run in st.list_runs(sweep="c"):
        assert run.status == "completed"
        assert_contiguous(st, run)


@pytest.fixture
def pg_sweep_db(tmp_path):
    """(URL, server folder): a PostgreSQL server of the test's own where one can be started (the test stops and
    restarts it); else (URL, None): a fresh database of its own on the suite's PostgreSQL server (dropped
    afterwards), or SQLite without one."""
    from conftest import PG_URL

    own = _own_pg_server()
    if own is not None:
        folder, url = own
        try:
            yield url, folder
        finally:
            subprocess.run(["bash", str(ROOT / "scripts" / "pg-temp.sh"), "stop", folder], timeout=120)
    elif PG_URL:
        from db_backends import fresh_pg_database

        for url in fresh_pg_database():
            yield url, None
    else:
        yield f"sqlite:///{tmp_path / 'trk.db'}", None


def _tb_scalars(path: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar tag in a TensorBoard event file (TFRecord framing: length, its CRC, the
    serialized Event, its CRC), read with tensorboardX's own protobuf classes."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out, data, i = [], path.read_bytes(), 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        out += [(ev.step, v.simple_value) for v in ev.summary.value if v.tag == tag]
    return sorted(out)


def test_a_postgresql_sweep_on_ray_train_with_every_tracker_rides_out_a_database_restart(tmp_path, monkeypatch,
                                                                                          pg_sweep_db):
    """One sweep on PostgreSQL checked for four things (one sweep keeps the suite's Ray start-ups down):
    - Ray Train: its run trains on 2 data-parallel workers (``--workers-per-trial 2``, sched/ddp.py), once, with
      one contiguous series, and its checkpoint is the one Ray Train persisted in the sweep's storage (a killed
      worker's retry: test_sched_ddp.py, slow);
    - a database restart: the server is stopped for ~4 s while the run trains and reports (where the test can run
      a server of its own: root and a PostgreSQL installation; elsewhere this part is left out, with a warning);
      the driver retries with backoff, keeps its buffered points, and the run completes with a whole series;
    - the database line: the URL is printed masked, the password never;
    - `--tracker` logs every stored point: an MLflow experiment named after the sweep in the local SQLite store
      (artifacts beside it) with each run's config as parameters, TensorBoard event files in the printed folder,
      and an offline W&B run per run - all written by the real packages, nothing mocked - and each tracker's
      series equals the database's, point for point.
    Without any PostgreSQL server the same sweep runs on SQLite (trackers and the database line only)."""
    import warnings
    from urllib.parse import urlsplit

    from ebt_scaling.security import mask_url

    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboardX")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    (url, folder), name = pg_sweep_db, "trk"
    storage = tmp_path / "runs"
    spec = write_spec(tmp_path, name, families='["transformer_pp"]', steps=100, values="[1]")
    spec.write_text(spec.read_text().replace("checkpoint_interval = 20", "checkpoint_interval = 50"))
    drv = subprocess.Popen([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(spec), "--db", url,
                            "--progress", "plain", "--storage", str(storage), "--workers-per-trial", "2",
                            "--tracker", "mlflow", "--tracker", "tensorboard", "--tracker", "wandb"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        if folder is not None:
            def reporting() -> bool:
                try:
                    runs = store(url).list_runs(sweep=name)
                    return any(r.status == "running" and store(url).get_metrics(r.id, "train_loss") for r in runs)
                except Exception:
                    return False

            _wait_for(reporting, 240, drv, "the first metric points")
            from sqlalchemy.engine import make_url

            port = make_url(url).port
            _pg_ctl(folder, "-m", "fast", "stop")
            time.sleep(4)
            _pg_ctl(folder, "-l", f"{folder}/server.log", "-o",
                    f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}/sock -c fsync=off", "start")
        else:
            warnings.warn("no PostgreSQL server of the test's own (needs root and a PostgreSQL installation): "
                          "the database restart was not tested", stacklevel=1)
        out, _ = drv.communicate(timeout=400)
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()
    assert drv.returncode == 0, out
    assert f"sweep {name}: 1 completed" in out and f"database: {mask_url(url)}" in out, out
    pw = urlsplit(url).password
    assert not pw or pw not in out
    st = store(url)
    runs = st.list_runs(sweep=name)
    assert len(runs) == 1 and all(r.status == "completed" and r.attempts == 1 for r in runs), out
    for run in runs:
        assert_contiguous(st, run)
        assert [p.step for p in st.get_metrics(run.id, "val_loss")] == [20, 40, 60, 80, 100]
    # Ray Train
    assert "(2 workers on Ray Train)" in out and "retrying" not in out, out
    ck = Path(runs[0].checkpoint_dir)  # persisted by Ray Train in the sweep's storage
    assert str(ck).startswith(str(storage.resolve())) and (ck / "model.pt").exists()
    assert json.loads((ck / "ebt_checkpoint.json").read_text())["step"] == 100

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    assert exp.artifact_location == (storage.resolve() / "mlartifacts").as_uri()
    mruns = {m.data.tags["run_id"]: m for m in client.search_runs([exp.experiment_id])}
    assert sorted(mruns) == sorted(str(r.id) for r in runs)
    assert f"mlflow: experiment {name!r} at sqlite:///" in out
    assert f"tensorboard: event files in {storage.resolve() / 'tensorboard' / name}" in out
    for run in runs:
        db_series: dict[str, list[tuple[int, float]]] = {}
        for p in st.get_metrics(run.id):
            db_series.setdefault(p.name, []).append((p.step, p.value))
        assert len(db_series["train_loss"]) == 20 and len(db_series["val_loss"]) == 5  # log_interval 5 of 100
        depth = int(run.x)
        mrun = mruns[str(run.id)]
        assert mrun.info.run_name == f"transformer_pp/depth={depth}/seed0" and mrun.data.tags["sweep"] == name
        assert mrun.info.status == "FINISHED"
        assert mrun.data.params["model.family"] == "transformer_pp" and mrun.data.params["model.n_layer"] == str(depth)
        # only metric series, never config fields or Ray internals (pid, done, ...)
        assert set(mrun.data.metrics) == set(db_series), mrun.data.metrics
        for n, series in db_series.items():
            got = sorted((m.step, m.value) for m in client.get_metric_history(mrun.info.run_id, n))
            assert [s for s, _ in got] == [s for s, _ in series], n
            assert [v for _, v in got] == pytest.approx([v for _, v in series], rel=1e-12, nan_ok=True), n

        tb_dir = storage.resolve() / "tensorboard" / name / "transformer_pp" / f"depth={depth}" / "seed0"
        (event_file,) = tb_dir.glob("events.out.tfevents.*")
        tb = _tb_scalars(event_file, "train_loss")
        assert [s for s, _ in tb] == [s for s, _ in db_series["train_loss"]]
        assert [v for _, v in tb] == pytest.approx([v for _, v in db_series["train_loss"]], rel=1e-6)  # float32

    wb = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wb) == len(runs) and all(b"train_loss" in f.read_bytes() for f in wb)
