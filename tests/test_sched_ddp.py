"""Data-parallel trials on Ray Train (issue 18 item 2): requests, spec, driver callback, a sweep with a killed worker.

Fast: a trial that would train on fewer GPUs than it reserves is refused in one line; ``workers_per_trial`` in a
spec is validated; a batch size that is not a multiple of the workers is refused before anything is written; the
driver callback records a checkpoint that Ray Train persisted (``ebt_ckpt_path``) after the points before it.

A sweep on Ray Train in the default suite: test_sched.py's PostgreSQL sweep (``--workers-per-trial 2``: one run,
one contiguous series, the checkpoint Ray Train persisted; one sweep for that, the trackers and a database
restart keeps the suite's Ray start-ups down).

Slow (about 70 s on a quiet 2-core machine: Ray Train's worker group starts twice): a sweep with
``workers_per_trial = 2`` on a local Ray instance (real Ray, real database, synthetic data, nano, 80 steps) with one
Ray Train worker process killed with SIGKILL mid-run; the run resumes from its last checkpoint and completes,
trained once: two attempts, one contiguous series, no step twice. (A retry inside a sweep from its latest
checkpoint stays in the default suite for one-worker trials: test_sched.py, the diverging run.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebt_scaling.errors import ConfigError
from ebt_scaling.sched.runner import RayOptions, check_request, cleanup_leftover_ray, trial_footprint
from ebt_scaling.sched.trainable import checkpoint_info

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
[sweep]
name = "{name}"
axis = "depth"
families = ["ebt"]
seeds = [0]

[model]
preset = "nano"
sequence_len = 32

[train]
steps = {steps}
batch_size = {batch}
warmup_steps = 2
log_interval = 5
eval_interval = 20
eval_batches = 2
checkpoint_interval = 20

[data]
source = "synthetic"
vocab_size = 64

[resources]
cpus_per_trial = 1
workers_per_trial = {workers}
max_retries = 1

[axis]
values = [1]
"""


def write_spec(tmp_path: Path, name: str = "ddp", *, steps: int = 80, batch: int = 4, workers: int = 2) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(SPEC.format(name=name, steps=steps, batch=batch, workers=workers))
    return p


@pytest.fixture(autouse=True)
def _no_leftover_ray():
    yield
    cleanup_leftover_ray()


def test_a_trial_that_trains_on_fewer_gpus_than_it_reserves_is_refused():
    with pytest.raises(ConfigError, match="trains on 1 GPU but reserves 4.*--workers-per-trial 4"):
        check_request(RayOptions(gpus_per_trial=4))
    with pytest.raises(ConfigError, match="one whole GPU"):
        check_request(RayOptions(gpus_per_trial=0.5, workers_per_trial=2))
    for ok in (RayOptions(gpus_per_trial=0.5), RayOptions(gpus_per_trial=1, workers_per_trial=4),
               RayOptions(cpus_per_trial=2, workers_per_trial=2)):
        check_request(ok)
    assert trial_footprint(RayOptions(gpus_per_trial=1, cpus_per_trial=2, workers_per_trial=4)) == (8.0, 4.0)


def test_workers_per_trial_in_a_spec_and_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from ebt_scaling.cli.main import app
    from ebt_scaling.sweeps.spec import load_spec

    assert load_spec(write_spec(tmp_path, "ok")).resources["workers_per_trial"] == 2
    with pytest.raises(ConfigError, match="resources.workers_per_trial"):
        load_spec(write_spec(tmp_path, "zero", workers=0))
    db = f"sqlite:///{tmp_path / 'x.db'}"
    r = CliRunner().invoke(app, ["sweep", "--spec", str(write_spec(tmp_path, "odd", batch=6, workers=4)), "--dry-run",
                                 "--no-db-check", "--db", db])
    assert r.exit_code != 0 and "not divisible by workers_per_trial = 4" in r.output, r.output
    r = CliRunner().invoke(app, ["sweep", "--spec", str(write_spec(tmp_path, "cli")), "--dry-run", "--no-db-check",
                                 "--workers-per-trial", "3", "--db", db])
    assert r.exit_code != 0 and "workers_per_trial = 3" in r.output, r.output
    assert not (tmp_path / "x.db").exists()


def test_callback_records_a_ray_train_checkpoint_after_its_points():
    from ebt_scaling.sched.callback import SweepCallback

    events: list[tuple] = []

    class Sink:
        def started(self, run_id, host, device):
            events.append(("started", run_id))

        def metrics(self, batch):
            events.extend(("point", rid, p.step) for rid, pts in batch.items() for p in pts)

        def checkpoint(self, run_id, path, step):
            events.append(("checkpoint", run_id, path, step))

        def heartbeat(self, run_ids):
            pass

    class Trial:
        config = {"run": {"run_id": 3}}

    cb = SweepCallback(Sink(), [{"run_id": 3, "spec": {"train": {"steps": 40}}}], flush_s=1e9)
    cb.on_trial_result(0, [], Trial(), {"ebt_hello": {"host": "h", "device": "cpu"}, "ebt_step": 0})
    cb.on_trial_result(1, [], Trial(), {"ebt_step": 20, "ebt_points": [("train_loss", 20, 1.0)]})
    cb.on_trial_result(2, [], Trial(), {"ebt_step": 20, "ebt_ckpt_step": 20, "ebt_ckpt_path": "/s/r3/step_20"})
    assert events == [("started", 3), ("point", 3, 20), ("checkpoint", 3, "/s/r3/step_20", 20)]
    assert cb.runs[3].ckpt_step == 20


def _train_workers(tag: str) -> list[int]:
    """PIDs of the Ray Train worker processes whose environment carries ``tag`` (this test's driver's)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if not (d / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                continue
            if f"EBT_TEST_TAG={tag}".encode() in (d / "environ").read_bytes():
                pids.append(int(d.name))
        except OSError:
            continue
    return sorted(pids)


@pytest.mark.slow  # ~70 s; the default suite keeps a Ray Train sweep (test_sched.py) and a one-worker retry from a
# checkpoint (test_sched.py, the diverging run)
def test_sweep_with_two_workers_survives_a_killed_worker(tmp_path):
    from ebt_scaling.db import Store

    url = f"sqlite:///{tmp_path / 'ddp.db'}"
    spec = write_spec(tmp_path)
    tag = str(tmp_path)
    env = dict(os.environ, EBT_TEST_TAG=tag, OMP_NUM_THREADS="1")
    drv = subprocess.Popen([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(spec), "--db", url,
                            "--progress", "plain"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=ROOT, env=env)

    def checkpointed_early() -> bool:
        try:
            runs = Store(url).list_runs(sweep="ddp")
        except Exception:  # the driver may not have created the schema yet
            return False
        info = [checkpoint_info(r.checkpoint_dir) for r in runs if r.status == "running" and r.checkpoint_dir]
        # of 80 steps: the kill lands with 40 or more steps to go, however fast the machine
        return any(i is not None and 20 <= i["step"] <= 40 for i in info)

    try:
        t0 = time.monotonic()
        while not checkpointed_early():
            assert drv.poll() is None, drv.stdout.read()
            assert time.monotonic() - t0 < 300, "timed out waiting for the first checkpoint"
            time.sleep(0.2)
        workers = _train_workers(tag)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        out, _ = drv.communicate(timeout=400)
    finally:
        if drv.poll() is None:
            drv.kill()
    assert drv.returncode == 0, out
    assert "sweep ddp: 1 completed" in out and "retrying from step" in out, out
    st = Store(url)
    (run,) = st.list_runs(sweep="ddp")
    assert run.status == "completed" and run.attempts == 2  # one retry, resumed; never trained again after
    assert [p.step for p in st.get_metrics(run.id, "train_loss")] == list(range(5, 81, 5))
    assert [p.step for p in st.get_metrics(run.id, "val_loss")] == [20, 40, 60, 80]
    ck = Path(run.checkpoint_dir)  # persisted by Ray Train in the sweep's storage, next to the database
    assert str(ck).startswith(str(tmp_path / "ddp.runs")) and (ck / "model.pt").exists()
    assert json.loads((ck / "ebt_checkpoint.json").read_text())["step"] == 80
    rows = json.loads(subprocess.run([sys.executable, "-m", "ebt_scaling", "runs", "--sweep", "ddp", "--format",
                                      "json", "--db", url], capture_output=True, text=True, cwd=ROOT).stdout)
    assert [(x["status"], x["config_hash"]) for x in rows] == [("completed", run.config_hash)]


def test_memory_plan_counts_one_workers_share_of_the_batch(tmp_path):
    from ebt_scaling.sweeps.expand import expand
    from ebt_scaling.sweeps.plan import MemorySetting, Resources, plan_memory
    from ebt_scaling.sweeps.spec import load_spec

    runs = expand(load_spec(write_spec(tmp_path, batch=8)))
    mem = MemorySetting(80.0)
    assert [p.micro_batch_size for p in plan_memory(runs, Resources(gpus_per_trial=1), mem)] == [8]
    assert [p.micro_batch_size for p in plan_memory(runs, Resources(gpus_per_trial=1, workers_per_trial=2), mem)] == [4]
