"""Data-parallel workers through torch.distributed (issue 18 item 2), on CPU with gloo and 2 local processes.

- 2 workers equal 1 worker (T++ and EBT S1, nano, synthetic, fp32): every logged train loss and the validation
  losses to 1e-4 relative (each worker takes half of every batch, its draws keyed by the global sample index);
- a 2-worker EBT S2 run (per-worker replay buffers) resumed from its step-2 checkpoint equals the straight run;
- a batch size that is not a multiple of the workers is one ``ConfigError`` line;
- ``gpu``: the same on NCCL with one GPU per worker (skipped without 2 CUDA devices).

Each test spawns one process per extra worker (about 5-10 s of imports each on a loaded 2-core machine).
"""

from __future__ import annotations

import pytest
import torch

from ebt_scaling.config import DataConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.errors import ConfigError
from ebt_scaling.records import ListSink
from ebt_scaling.train.launch import check_local, launch_local

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _spec(family: str, ckpt=None, recipe: str = "ebt_s1", **train_kw) -> RunSpec:
    kw = dict(steps=4, batch_size=4, lr=3e-3, warmup_steps=1, eval_interval=2, eval_batches=2, log_interval=1,
              seed=0, threads=1, precision="fp32", device="cpu")
    kw.update(train_kw)
    recipe = recipe if family == "ebt" else None
    m = model_config(family, "nano", vocab_size=32, sequence_len=16, recipe=recipe)
    return RunSpec(model=m, train=TrainConfig(**kw), data=DataConfig(source="synthetic", vocab_size=32),
                   recipe=recipe, checkpoint_dir=str(ckpt) if ckpt else None)


def _series(sink: ListSink, name: str) -> list[float]:
    return [v for _, v in sink.series(name)]


def _close(a: list[float], b: list[float], rel: float = 1e-4) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=rel)


@pytest.mark.parametrize("family", ["transformer_pp", "ebt"])
def test_two_workers_equal_one(family):
    spec = _spec(family)
    one, two = ListSink(), ListSink()
    r1 = launch_local(spec, 1, one)
    r2 = launch_local(spec, 2, two)
    assert r1.status == r2.status == "completed" and r1.steps == r2.steps == 4 and r1.tokens == r2.tokens
    for name in ("train_loss", "val_loss", "grad_norm") + (("train_ce", "val_loss_initial") if family == "ebt"
                                                          else ()):
        _close(_series(two, name), _series(one, name))
    assert r2.final_val_loss == pytest.approx(r1.final_val_loss, rel=1e-4)


def test_two_workers_resume_from_a_checkpoint(tmp_path):
    """EBT S2: random step count and size, noise, and a replay buffer per worker (every rank's is saved, rank r
    resumes with its own): resumed from step 2 equals straight."""
    spec = _spec("ebt", ckpt=tmp_path / "a", recipe="ebt_s2", checkpoint_interval=2)
    straight = ListSink()
    r1 = launch_local(spec, 2, straight)
    assert [s for _, s in straight.checkpoints] == [2, 4]  # rank 0's sink only; rank 0 wrote the files
    resumed = ListSink()
    r2 = launch_local(spec.with_(checkpoint_dir=str(tmp_path / "b")), 2, resumed,
                      resume_from=straight.checkpoints[0][0])
    assert r2.steps == 4 and r2.extra["resumed_from"]
    assert [s for s, _ in resumed.series("train_loss")] == [3, 4]
    _close(_series(resumed, "train_loss"), _series(straight, "train_loss")[2:], rel=1e-6)
    assert r2.final_val_loss == pytest.approx(r1.final_val_loss, rel=1e-6)


def test_batch_not_divisible_by_workers_is_refused():
    with pytest.raises(ConfigError, match="not divisible by 3"):
        check_local(_spec("transformer_pp", batch_size=4), 3)
    with pytest.raises(ConfigError, match="positive"):
        check_local(_spec("transformer_pp"), 0)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (one per worker)")
def test_two_workers_on_nccl_equal_one():
    spec = _spec("ebt", device="cuda")
    assert check_local(spec, 2) == "nccl"
    one, two = ListSink(), ListSink()
    launch_local(spec, 1, one)
    launch_local(spec, 2, two)
    _close(_series(two, "train_loss"), _series(one, "train_loss"), rel=1e-3)


def test_train_cli_refuses_workers_that_do_not_divide_the_batch():
    from typer.testing import CliRunner

    from ebt_scaling.cli.main import app

    r = CliRunner().invoke(app, ["train", "--family", "ebt", "--preset", "nano", "--data", "synthetic",
                                 "--batch-size", "6", "--steps", "2", "--device", "cpu", "--workers", "4"])
    assert r.exit_code == 2 and "the batch size 6 is not divisible by 4" in r.output, r.output
