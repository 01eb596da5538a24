"""precision = "tf32": validation, the TF32 flags set for a CUDA run and restored after it (tested on CPU through
the flags themselves), a CPU tf32 run training as fp32, ``ebt-scale train --precision``."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.config import DataConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.errors import ConfigError
from ebt_scaling.records import ListSink
from ebt_scaling.train import loop
from ebt_scaling.train.precision import matmul_precision, tf32_wanted

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture(autouse=True)
def _restore_flags():
    old = flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_tf32_is_a_valid_precision_and_typos_are_one_line():
    assert TrainConfig(precision="tf32").precision == "tf32"
    with pytest.raises(ConfigError, match=r"^TrainConfig.precision: unknown value 'tf16'; use auto, fp32, tf32 or "
                                          r"bf16$"):
        TrainConfig(precision="tf16")


def test_tf32_changes_the_run_identity_but_not_the_autocast():
    a = RunSpec(model=model_config("transformer_pp", "nano", vocab_size=32, sequence_len=16),
                train=TrainConfig(precision="fp32"))
    assert a.config_hash != a.with_(train=TrainConfig(precision="tf32")).config_hash
    assert loop.autocast_context(CUDA, "tf32") is loop.autocast_context(CUDA, "fp32")  # no autocast, fp32 tensors


@pytest.mark.parametrize("start", [(False, False), (True, True), (False, True)])
def test_matmul_precision_sets_tf32_on_cuda_and_restores(start):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = start
    with matmul_precision(CUDA, "tf32"):
        assert flags() == (True, True)
        assert torch.get_float32_matmul_precision() == "high"
    assert flags() == start
    with matmul_precision(CUDA, "fp32"):  # fp32 is true fp32, whatever the process set before
        assert flags() == (False, False)
    assert flags() == start


def test_matmul_precision_restores_after_an_error():
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    with pytest.raises(RuntimeError, match="boom"), matmul_precision(CUDA, "tf32"):
        raise RuntimeError("boom")
    assert flags() == (False, True)


@pytest.mark.parametrize("device, precision", [(CPU, "tf32"), (CPU, "fp32"), (CUDA, "auto"), (CUDA, "bf16")])
def test_matmul_precision_leaves_cpu_runs_and_bf16_alone(device, precision):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    assert tf32_wanted(device, precision) is None
    with matmul_precision(device, precision):
        assert flags() == (False, True)
    assert flags() == (False, True)


def _spec(precision, device="cpu", family="transformer_pp"):
    m = model_config(family, "nano", vocab_size=32, sequence_len=16, recipe="ebt_s1" if family == "ebt" else None)
    t = TrainConfig(steps=3, batch_size=2, warmup_steps=1, eval_interval=3, eval_batches=1, log_interval=1,
                    threads=1, precision=precision, device=device)
    return RunSpec(model=m, train=t, data=DataConfig(source="synthetic", vocab_size=32))


def test_train_sets_the_flags_for_a_cuda_run_and_restores_them(monkeypatch):
    """The wiring of ``train``: its spec's device and precision decide the flags for the whole call."""
    seen = []
    monkeypatch.setattr(loop, "resolve_device", lambda name: CUDA)
    wrapped = loop._with_matmul_precision(lambda spec, sink, **kw: seen.append(flags()) or "done")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    assert wrapped(_spec("tf32", device="cuda"), ListSink()) == "done"
    assert seen == [(True, True)] and flags() == (False, False)
    assert loop.train.__wrapped__ is not None  # the real train is wrapped


def test_cpu_tf32_run_trains_as_fp32():
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    fp32, tf32 = (loop.train(_spec(p), ListSink()) for p in ("fp32", "tf32"))
    assert tf32.status == "completed" and tf32.final_train_loss == fp32.final_train_loss
    assert tf32.final_val_loss == fp32.final_val_loss
    assert flags() == (False, True)


def test_train_cli_precision_option():
    base = ["train", "--family", "transformer_pp", "--preset", "nano", "--data", "synthetic", "--vocab-size", "32",
            "--steps", "2", "--seq-len", "16", "--batch-size", "2", "--eval-batches", "1", "--json"]
    r = CliRunner().invoke(app, [*base, "--precision", "tf32"])
    assert r.exit_code == 0, r.output
    assert '"precision": "tf32"' in r.stdout
    r = CliRunner().invoke(app, [*base, "--precision", "half"])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "TrainConfig.precision: unknown value 'half'" in lines[0], r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tf32_run_uses_tf32_during_the_run_only():
    seen = []
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    r = loop.train(_spec("tf32", device="cuda", family="ebt"), ListSink(), on_step=lambda d: seen.append(flags()))
    assert r.status == "completed" and seen and set(seen) == {(True, True)}
    assert flags() == (False, False)
