"""`ebt-scale train` and `ebt-scale data prepare`: JSON output, summary, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app

SMALL = ["--preset", "nano", "--data", "synthetic", "--vocab-size", "32", "--steps", "6", "--seq-len", "16",
         "--batch-size", "2", "--eval-interval", "3", "--eval-batches", "2", "--log-interval", "2"]


def test_train_json_on_stdout_progress_elsewhere(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "ebt_scaling", "train", "--family", "transformer_pp", *SMALL,
                        "--checkpoint-dir", str(tmp_path / "ck"), "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert out["status"] == "completed" and out["steps"] == 6 and out["tokens"] == 6 * 2 * 16
    assert out["final_val_loss"] > 0 and out["final_val_ppl"] > 1
    assert out["extra"]["unigram_loss"] > 0 and out["extra"]["entropy_rate"] > 0
    assert out["params"]["total"] > 0 and set(out["flops_per_token"]) == {"paper", "exact"}
    assert out["spec"]["model"]["family"] == "transformer_pp" and len(out["config_hash"]) == 64
    assert out["checkpoint_dir"].endswith("step_00000006")
    assert os.path.isdir(out["checkpoint_dir"])
    # stderr is not a terminal: plain progress lines (each validation and the last step), not a live bar
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("train transformer_pp nano: step")]
    assert [ln.split()[4] for ln in lines] == ["3/6", "6/6"], r.stderr
    assert "val " in lines[-1] and "tok/s" in lines[-1] and "ETA" in lines[-1]


def test_train_summary_table_ebt():
    r = CliRunner().invoke(app, ["train", "--family", "ebt", *SMALL, "--steps", "3"])
    assert r.exit_code == 0, r.output
    for key in ("final train loss", "final val loss", "val perplexity", "unigram val loss", "params", "wall time"):
        assert key in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["--family", "gpt"], "unknown family"),
    (["--family", "transformer_pp", "--recipe", "ebt_s1"], "--recipe applies to --family ebt"),
    (["--data", "text:/definitely/not/here.txt"], "no such file or folder"),
    (["--data", "wikipedia"], "unknown source"),
    (["--lr", "-1"], "TrainConfig.lr"),
    (["--preset", "huge"], "unknown preset"),
    (["--recipe", "ebt_s9"], "unknown recipe"),
    (["--vocab-size", "100000"], "synthetic source supports"),
    (["--progress", "fancy"], "--progress: unknown value"),
    (["--cuda-graph", "--device", "cpu"], "TrainConfig.cuda_graph: needs a CUDA device"),
    (["--cuda-graph", "--recipe", "ebt_s2", "--device", "cpu"], "use the ebt_s1 recipe"),
    (["--compile", "--cuda-graph", "--family", "transformer_pp"], "cannot be combined with cuda_graph"),
    (["--family", "transformer_pp", "--step-size", "2"], "--step-size and --step-size-lr-mult apply to --family ebt"),
    (["--step-size", "-1"], "ModelConfig.step_size: must be > 0"),
    (["--micro-batch-size", "two"], "--micro-batch-size: expected an integer"),
    (["--batch-size", "4", "--micro-batch-size", "5"], "in 1..batch_size (4), got 5"),
    (["--micro-batch-size", "0"], "TrainConfig.micro_batch_size: must be an integer in 1.."),
    (["--schedule-steps", "1"], "TrainConfig.schedule_steps: 1 is shorter than the run (steps = 2)"),
])
def test_train_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    base = ["train", "--preset", "nano", "--data", "synthetic", "--vocab-size", "32", "--steps", "2",
            "--checkpoint-dir", str(tmp_path / "ck")]
    r = CliRunner().invoke(app, base + args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "ck").exists()  # nothing written


def test_train_compile_without_a_cpp_compiler_is_one_line_exit_2(tmp_path):
    from torch._inductor import config as inductor_config

    args = ["train", "--family", "transformer_pp", "--preset", "nano", "--data", "synthetic", "--vocab-size", "32",
            "--steps", "2", "--compile", "--device", "cpu", "--checkpoint-dir", str(tmp_path / "ck")]
    with inductor_config.patch({"cpp.cxx": (None, "no-such-compiler")}):  # as CXX=no-such-compiler would
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs a C++ compiler and 'no-such-compiler' was not found" in lines[0], r.stderr
    assert not (tmp_path / "ck").exists()


def test_data_prepare_synthetic_json():
    r = CliRunner().invoke(app, ["data", "prepare", "--source", "synthetic", "--vocab-size", "16", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["vocab_size"] == 16 and s["train_tokens"] > s["val_tokens"] > 0
    assert s["entropy_rate"] < s["unigram_loss"]


def test_train_ebt_step_size_options_and_cpu_preset_defaults():
    """The CPU presets' tuned S1 settings (config.PRESETS) reach the EBT's config; --step-size and
    --step-size-lr-mult override them; S2 keeps its recipe's alpha."""
    from ebt_scaling.config import get_preset

    def spec(*extra):
        r = CliRunner().invoke(app, ["train", "--family", "ebt", *SMALL, "--steps", "1", "--json", *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)["spec"]["model"]

    tuned = get_preset("nano").ebt_options("ebt_s1")
    assert tuned, "the nano preset has tuned S1 options"
    m = spec()
    assert all(m[k] == v for k, v in tuned.items()), (m, tuned)
    m = spec("--step-size", "7", "--step-size-lr-mult", "21")
    assert (m["step_size"], m["step_size_lr_multiplier"]) == (7.0, 21.0)
    assert spec("--recipe", "ebt_s2")["step_size"] == 5.0


def test_micro_batch_size_auto_on_cpu_is_the_whole_batch():
    r = CliRunner().invoke(app, ["train", "--family", "transformer_pp", "--preset", "nano", "--data", "synthetic",
                                 "--vocab-size", "32", "--steps", "2", "--batch-size", "4", "--device", "cpu",
                                 "--micro-batch-size", "auto", "--json"])
    assert r.exit_code == 0, r.output
    assert "auto on CPU = the whole batch" in r.stderr
    assert json.loads(r.stdout)["spec"]["train"]["micro_batch_size"] is None
