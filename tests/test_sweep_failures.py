"""Issue 30, failures: an error that would repeat fails the run once (not max_retries + 1 times) and the driver
ends with one line per distinct cause; the dry run draws a training and a validation window from every store it
will read, so such a store is refused before any run starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.config import RunSpec, TrainConfig, model_config
from ebt_scaling.data.store import prepare
from ebt_scaling.data.streams import parse_source
from ebt_scaling.errors import ConfigError, DataError
from ebt_scaling.sched.trial_common import permanent_error

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
[sweep]
name = "{name}"
axis = "width"
families = ["transformer_pp"]
seeds = [0]
[model]
preset = "tiny"
n_layer = 1
n_embd = 32
n_head = 1
sequence_len = 32
[train]
steps = 4
batch_size = 4
warmup_steps = 1
eval_interval = 2
eval_batches = 1
log_interval = 2
checkpoint_interval = 2
[data]
source = "store:{store}"
vocab_size = 256
[resources]
cpus_per_trial = 1
max_retries = 2
[axis]
values = [32, 64]
head_size = 16
"""


def _bad_store(tmp_path: Path) -> Path:
    """40 tiny documents and one long one, bytes: the hash split's validation documents hold 20 tokens, fewer than
    a window of sequence_len + 1 = 33."""
    docs = [f"w{i:02d} x" for i in range(40)] + ["a long training document " * 20]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare(parse_source(f"jsonl:{tmp_path / 'd.jsonl'}"), "byte", tmp_path / "store")
    return tmp_path / "store"


def test_which_errors_are_permanent():
    spec = RunSpec(model=model_config("transformer_pp", "nano", vocab_size=64, sequence_len=16),
                   train=TrainConfig(steps=2, batch_size=4, micro_batch_size=1))
    assert permanent_error(DataError("store: no window"), spec)
    assert permanent_error(ConfigError("TrainConfig.lr: bad"), spec)
    assert not permanent_error(RuntimeError("NCCL timeout"), spec)
    oom = type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2 GiB")
    assert permanent_error(oom, spec)  # micro-batch 1: nothing smaller to try
    assert not permanent_error(oom, spec.with_(train=TrainConfig(steps=2, batch_size=4, micro_batch_size=2)))


def test_a_data_parallel_run_classifies_its_workers_errors_like_a_one_device_run():
    """Ray Train hands the trial a WorkerGroupError holding each failed rank's own exception: a permanent one on any
    rank is the run's one-line reason and ends it without a retry (sched/ddp.py ddp_trial)."""
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from ebt_scaling.sched.ddp import worker_failure

    spec = RunSpec(model=model_config("transformer_pp", "nano", vocab_size=64, sequence_len=16),
                   train=TrainConfig(steps=2, batch_size=4))
    bad = DataError("store: the validation split holds 20 tokens; lower sequence_len or fix data.source")
    exc = WorkerGroupError("rank 1 failed", {0: RuntimeError("NCCL timeout\nsecond line"), 1: bad})
    assert worker_failure(exc, spec) == (f"DataError: {bad}", True)
    assert worker_failure(WorkerGroupError("x", {1: ConfigError("TrainConfig.lr: bad")}), spec) == (
        "ConfigError: TrainConfig.lr: bad", True)
    msg, permanent = worker_failure(WorkerGroupError("x", {0: RuntimeError("NCCL timeout")}), spec)
    assert (msg, permanent) == ("RuntimeError: NCCL timeout", False)  # transient: Tune retries it
    msg, permanent = worker_failure(ControllerError(RuntimeError("placement group removed")), spec)
    assert not permanent and msg == "ControllerError: placement group removed"


def test_dry_run_refuses_a_store_without_a_validation_window(tmp_path):
    store = _bad_store(tmp_path)
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(name="bad", store=store))
    r = CliRunner().invoke(app, ["sweep", "--spec", str(spec), "--dry-run", "--no-db-check"])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "the validation split holds 20 tokens" in lines[0] and "data.source" in lines[0]


@pytest.mark.slow  # a local Ray sweep (~30 s)
def test_a_store_without_a_validation_window_fails_each_run_once(tmp_path):
    store = _bad_store(tmp_path)
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(name="bad", store=store))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    r = subprocess.run([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(spec), "--db", url,
                        "--progress", "plain"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    from ebt_scaling.db import Store

    runs = Store(url).list_runs(sweep="bad")
    assert [(x.status, x.attempts) for x in runs] == [("failed", 1), ("failed", 1)]  # max_retries = 2: not retried
    assert all("validation split holds 20 tokens" in x.reason for x in runs)
    cause = [ln for ln in r.stderr.splitlines() if ln.startswith("  2 run(s): DataError")]
    assert len(cause) == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # a local Ray sweep with Ray Train workers (~60 s)
def test_a_data_parallel_run_on_a_bad_store_fails_once(tmp_path):
    store = _bad_store(tmp_path)
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(name="badddp", store=store))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    r = subprocess.run([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(spec), "--db", url,
                        "--progress", "plain", "--workers-per-trial", "2"], capture_output=True, text=True,
                       cwd=ROOT, timeout=900)
    assert r.returncode == 1, r.stdout + r.stderr
    from ebt_scaling.db import Store

    runs = Store(url).list_runs(sweep="badddp")
    assert [(x.status, x.attempts) for x in runs] == [("failed", 1), ("failed", 1)]  # max_retries = 2: not retried
    assert all(x.reason.startswith("DataError: ") and "validation split holds 20 tokens" in x.reason for x in runs)
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("  2 run(s): DataError")]) == 1, r.stderr
