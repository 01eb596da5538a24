"""Video sweeps (issue 31 items 3-4): the shipped video specs, their expansion (frame_dim, video recipes, the EBT's
LR / 3, frames instead of tokens, video parameter and FLOPs counts), the refusals, the dry run (cost and memory,
frames, the missing or present video store). No training here but the slow end-to-end sweep at the bottom."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebt_scaling.config import PRESETS, VIDEO_LR_DIVISOR, VIDEO_RECIPE_OVERRIDES
from ebt_scaling.errors import SpecError
from ebt_scaling.models.video_flops import video_flops_per_frame, video_param_counts
from ebt_scaling.sweeps import expand, load_spec, parse_spec, spec_path
from ebt_scaling.sweeps.memory import estimate_memory
from ebt_scaling.sweeps.plan import Resources, format_plan, plan_cost

ROOT = Path(__file__).resolve().parents[1]
TINY = ("width", "params")

# The tiny specs' run identities (a change here retrains every stored run of these sweeps: change it on purpose).
PINNED = {
    ("width", "transformer_pp", "48", 0): "1e49d7e84821959ca4a4e3b3e7ac7dc23cd3360269ed2164ac1c382da8ae82ca",
    ("width", "ebt", "96", 0): "f350c9fdcca89f497962b398b317ca578598451d760a5f1af1380014ed1d09a2",
    ("params", "ebt", "d64", 0): "fb181b845546c836c5c63e1d4e22d7d7e1ca87097579d2b2d2ff96defc982007",
    ("params", "transformer_pp", "d96x3", 0): "6753f3bb898c3e5f4344c395a25d8ba8d248141f8575897c3379cf882803348b",
}


def _app():
    from ebt_scaling.cli.main import app

    return app


def _spec(tmp_path: Path, text: str, name: str = "v.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


VIDEO = """
[sweep]
name = "v"
axis = "{axis}"
{sweep_extra}
[model]
preset = "nano"
frame_dim = 16
sequence_len = 4
{model_extra}
[train]
steps = 20
batch_size = 4
warmup_steps = 2
{train_extra}
[data]
source = "{source}"
{data_extra}
[axis]
{axis_body}
"""


def video_text(axis: str = "width", axis_body: str = "values = [32, 64]\nhead_size = 16", source: str =
               "synthetic-video", sweep_extra: str = "", model_extra: str = "", train_extra: str = "",
               data_extra: str = "") -> str:
    return VIDEO.format(axis=axis, axis_body=axis_body, source=source, sweep_extra=sweep_extra,
                        model_extra=model_extra, train_extra=train_extra, data_extra=data_extra)


def _fails(text: str, *fragments: str) -> str:
    import tomllib

    with pytest.raises(SpecError) as e:
        parse_spec(tomllib.loads(text), source="v.toml")
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


# ------------------------------------------------------------------------------------------ shipped specs
@pytest.mark.parametrize("axis", TINY)
def test_tiny_video_specs_expand(axis):
    path = spec_path(axis, "tiny", "video")
    assert path == ROOT / "experiments" / "tiny" / f"video-{axis}.toml"
    sw = load_spec(path)
    assert (sw.modality, sw.recipe, sw.axis) == ("video", "ebt_vid_s1", axis)
    assert sw.data["source"].startswith("synthetic-video")
    runs = expand(sw)
    assert {r.planned.family for r in runs} == {"ebt", "transformer_pp"} and len(runs) >= 6
    assert len({r.planned.x for r in runs}) >= 3
    for r in runs:
        m, t = r.spec.model, r.spec.train
        assert m.frame_dim == 32 and m.modality == "video" and m.vocab_size == 2
        assert r.spec.recipe == ("ebt_vid_s1" if m.family == "ebt" else None)  # recorded, not hashed
        assert r.planned.config == r.spec.to_dict() and r.planned.config_hash == r.spec.config_hash
        assert r.planned.params == video_param_counts(m, 32)
        for conv in ("paper", "exact"):
            assert r.planned.flops_per_token[conv] == pytest.approx(video_flops_per_frame(m, 32, conv))
        assert r.planned.tokens == t.steps * t.batch_size * m.sequence_len  # predicted frames
        if axis == "params":
            assert r.planned.x == r.planned.params["non_embedding"]
        else:
            assert r.planned.x == m.n_embd
        if r.planned.family == "ebt":  # the video S1 recipe at the CPU size's alpha (ebt_vid_s1 with alpha 30)
            for k, v in VIDEO_RECIPE_OVERRIDES["ebt_vid_s1"].items():
                if k not in ("step_size", "step_size_lr_multiplier"):
                    assert getattr(m, k) == v, k
            assert (m.step_size, m.step_size_lr_multiplier) == (30.0, 100.0)
    for (ax, fam, label, seed), want in PINNED.items():
        if ax == axis:
            got = next(r.config_hash for r in runs if (r.planned.family, r.label, r.planned.seed) == (fam, label, seed))
            assert got == want, (ax, fam, label, seed)


def test_tiny_video_params_share_the_width_runs():
    """2x48 and 2x64 are the width sweep's shapes: the same configurations, trained once for both sweeps."""
    width = {r.config_hash for r in expand(load_spec(spec_path("width", "tiny", "video")))}
    params = {r.config_hash for r in expand(load_spec(spec_path("params", "tiny", "video")))}
    assert len(width & params) == 8 and len(params) == 12  # 2 shapes x 2 families x 2 seeds shared


def test_paper_video_specs_follow_the_paper():
    w = load_spec(spec_path("width", "paper", "video"))
    p = load_spec(spec_path("params", "paper", "video"))
    for sw in (w, p):
        assert sw.modality == "video" and sw.recipe == "ebt_vid_s1"
        assert sw.data["source"] == "store:/path/to/ssv2-sdvae"
        for r in expand(sw):
            m, t = r.spec.model, r.spec.train
            assert (m.frame_dim, m.sequence_len, t.batch_size) == (3136, 16, 256)
            assert (t.steps, t.schedule_steps, t.warmup_steps, t.precision) == (100_000, 1_000_000, 10_000, "tf32")
            if r.planned.family == "ebt":
                assert (m.step_size, m.step_size_learnable, m.mcmc_num_steps) == (30000.0, True, 2)
    assert sorted({r.spec.model.n_embd for r in expand(w)}) == [384, 768, 1024, 1536, 2048]
    assert [v for v in p.values] == ["xxs", "small", "medium", "large", "xl"]
    # the EBT's LR is the Transformer++'s / 3 at every tuning point (paper section 14: LR/3): on the width axis
    # [train.ebt] lr is the T++'s / 3 and both grids are the same multipliers; on the params axis each level carries
    # its preset's LR and the EBT's multipliers are the T++'s / 3
    assert (w.train["lr"], w.family_train["ebt"]["lr"]) == (0.0012, 0.0004)
    for sw in (w, p):
        lrs: dict[tuple, dict[str, float]] = {}
        for r in expand(sw):
            tune = r.planned.config["tune"]
            div = VIDEO_LR_DIVISOR if r.planned.family == "ebt" and sw is p else 1
            scale = tune["lr_scale"] * div
            lrs.setdefault((r.label, round(scale, 6)), {})[r.planned.family] = r.spec.train.lr
        assert len(lrs) == 5 * 3
        for (label, _), pair in lrs.items():
            assert pair["ebt"] == pytest.approx(pair["transformer_pp"] / VIDEO_LR_DIVISOR, rel=1e-9), label
    xl = [r for r in expand(p) if r.label == "xl" and r.planned.family == "transformer_pp"]
    assert {r.spec.train.lr for r in xl} == {PRESETS["xl"].peak_lr * s for s in (0.5, 1, 2)}


def test_video_specs_are_chosen_by_modality():
    runner = CliRunner()
    r = runner.invoke(_app(), ["sweep", "--axis", "depth", "--modality", "video", "--dry-run", "--no-db-check"])
    assert r.exit_code == 2 and "no shipped tiny video spec for the depth axis" in r.output, r.output
    assert "--axis params or width" in r.output
    r = runner.invoke(_app(), ["sweep", "--spec", str(spec_path("width", "tiny")), "--modality", "video",
                               "--dry-run", "--no-db-check"])
    assert r.exit_code == 2 and "the spec is text but --modality video" in r.output, r.output


# ------------------------------------------------------------------------------------------ refusals
def test_modality_mismatches_are_one_line(tmp_path):
    text = video_text()
    _fails(video_text(source="shakespeare"), "data.source: 'shakespeare' is a text source", "synthetic-video")
    _fails(text.replace("frame_dim = 16\n", ""), "data.source: 'synthetic-video' holds video clips",
           "set [model] frame_dim")
    _fails(video_text(sweep_extra='modality = "video"').replace("frame_dim = 16\n", "").replace(
        "synthetic-video", "synthetic"), "sweep.modality: \"video\" needs [model] frame_dim")
    _fails(video_text(sweep_extra='modality = "text"'), "sweep.modality: \"text\" but [model] frame_dim = 16")
    _fails(video_text(sweep_extra='recipe = "ebt_s1"'), "sweep.recipe: ebt_s1 is a text recipe", "ebt_vid_s1")
    text_spec = video_text(sweep_extra='recipe = "ebt_vid_s1"', source="synthetic").replace("frame_dim = 16\n", "")
    _fails(text_spec, "sweep.recipe: ebt_vid_s1 is a video recipe and this sweep is text", "ebt_s1 or ebt_s2")
    _fails(video_text(axis="isoflop", axis_body='values = ["nano"]\nbudgets = [1e9]\nsizes_per_budget = 1'),
           "sweep.axis: the isoflop axis is not implemented for video")
    _fails(video_text(data_extra="vocab_size = 512"), "data.vocab_size: a video sweep has no tokenizer")
    # a video store of another frame size (only its manifest is read while planning)
    store = tmp_path / "vids"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"kind": "video", "params": {"frame_dim": 64}, "shards": []}))
    _fails(video_text(source=f"store:{store}"), "model.frame_dim: 16 differs from the video store's frame_dim 64",
           "set frame_dim = 64")
    tok = tmp_path / "toks"
    tok.mkdir()
    (tok / "manifest.json").write_text(json.dumps({"kind": "tokens", "shards": []}))
    _fails(video_text(source=f"store:{tok}"), "is a text source but the sweep is video")
    # --recipe on the command line: checked against the sweep's modality
    sw = parse_spec(__import__("tomllib").loads(text), source="v.toml")
    assert sw.select(recipe="ebt_vid_s2").recipe == "ebt_vid_s2"
    with pytest.raises(SpecError, match="--recipe: ebt_s2 is a text recipe and this sweep is video; use ebt_vid_s1"):
        sw.select(recipe="ebt_s2")


def test_video_axes_count_frames(tmp_path):
    import tomllib

    data = parse_spec(tomllib.loads(video_text(axis="data", axis_body="values = [160, 320]")), source="v.toml")
    runs = expand(data)
    assert sorted({r.spec.train.steps for r in runs}) == [10, 20]  # frames / (batch 4 x 4 context frames)
    assert sorted({r.planned.x for r in runs}) == [160.0, 320.0]
    _fails(video_text(axis="data", axis_body="values = [8]"),
           "axis.values: 8 frames is less than one batch (16 frames)")
    batch = expand(parse_spec(tomllib.loads(video_text(axis="batch", axis_body="values = [2, 4]")), source="v.toml"))
    assert sorted({r.planned.x for r in batch}) == [8.0, 16.0]  # frames per batch
    depth = expand(parse_spec(tomllib.loads(video_text(axis="depth", axis_body="values = [1, 2]")), source="v.toml"))
    assert {r.spec.model.frame_dim for r in depth} == {16}
    flops = expand(parse_spec(tomllib.loads(video_text(axis="flops", axis_body='values = ["nano", "tiny"]')),
                              source="v.toml"))
    for r in flops:
        assert r.planned.x == pytest.approx(video_flops_per_frame(r.spec.model, 16, "paper") * r.planned.tokens)


# ------------------------------------------------------------------------------------------ plan and dry run
def test_plan_counts_frames_and_video_memory():
    sw = load_spec(spec_path("width", "tiny", "video"))
    runs = expand(sw)
    plan = plan_cost(sw, runs, Resources(cpus_per_trial=1, total_cpus=2))
    d = plan.to_dict()
    assert (d["modality"], d["unit"]) == ("video", "frames")
    assert d["total"]["tokens"] == sum(r.spec.train.steps * r.spec.train.batch_size * 8 for r in runs)
    text = format_plan(plan)
    assert "modality: video" in text and " frames " in text and f"{d['total']['tokens']:.3g} frames" in text
    assert " tokens" not in text
    # memory: the video estimate prices (B, T, E) instead of (B, T, V) and the video models' parameters
    r = runs[-1]
    small, big = estimate_memory(r.spec, 1, device="gpu"), estimate_memory(r.spec, 32, device="gpu")
    assert big.saved_bytes > small.saved_bytes > 0
    assert small.weights_bytes == 4 * video_param_counts(r.spec.model, 32)["total"]


def test_paper_video_dry_run_without_the_store():
    runner = CliRunner()
    for axis in ("width", "params"):
        r = runner.invoke(_app(), ["sweep", "--axis", axis, "--scale", "paper", "--modality", "video", "--dry-run",
                                   "--no-db-check", "--total-gpus", "8"])
        assert r.exit_code == 0, r.output
        assert "note: no video store at /path/to/ssv2-sdvae (no manifest.json)" in r.output
        assert "ebt-scale data prepare --modality video" in r.output
        assert "GPU-hours" in r.output and "mem GiB" in r.output and "frames" in r.output
        assert "checked against exact CPU peaks of small video models" in r.output
        r = runner.invoke(_app(), ["sweep", "--axis", axis, "--scale", "paper", "--modality", "video", "--dry-run",
                                   "--no-db-check", "--total-gpus", "8", "--format", "json"])
        plan = json.loads(r.stdout)
        assert plan["unit"] == "frames" and plan["total"]["device_hours"] > 0
        assert all(row["memory_gib"] > 0 and row["frame_dim"] == 3136 for row in plan["runs"])
        assert all(row["micro_batch_size"] >= 1 and row["memory_fits"] for row in plan["runs"])


def test_dry_run_opens_a_video_store(tmp_path):
    from ebt_scaling.data.video import prepare_video

    store = tmp_path / "vids"
    prepare_video("synthetic", store, frame_dim=16, clip_frames=5, synthetic_clips=24, clips_per_shard=8)
    ok = _spec(tmp_path, video_text(source=f"store:{store}", data_extra="val_fraction = 0.25"))
    r = CliRunner().invoke(_app(), ["sweep", "--spec", str(ok), "--dry-run", "--no-db-check"])
    assert r.exit_code == 0, r.output
    assert "no video store" not in r.output
    # clips too short for the context: one line naming the store, nothing planned
    short = _spec(tmp_path, video_text(source=f"store:{store}").replace("sequence_len = 4", "sequence_len = 8"),
                  "short.toml")
    r = CliRunner().invoke(_app(), ["sweep", "--spec", str(short), "--dry-run", "--no-db-check"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    # a damaged shard: the checksum check stops the dry run in one line
    shard = sorted(store.glob("*.bin"))[0]
    shard.write_bytes(b"\0" * shard.stat().st_size)
    r = CliRunner().invoke(_app(), ["sweep", "--spec", str(ok), "--dry-run", "--no-db-check"])
    assert r.exit_code != 0 and shard.name in r.output, r.output


def test_video_planning_never_imports_torch():
    code = ("import sys\nfrom ebt_scaling.sweeps import expand, load_spec, spec_path\n"
            "from ebt_scaling.sweeps.plan import Resources, plan_cost, MemorySetting\n"
            "for a, s in (('width', 'tiny'), ('params', 'paper')):\n"
            "    sw = load_spec(spec_path(a, s, 'video')); runs = expand(sw)\n"
            "    plan_cost(sw, runs, Resources(gpus_per_trial=1, total_gpus=8), memory=MemorySetting())\n"
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------ end to end (slow)
@pytest.mark.slow  # ~5-10 min on 2 cores: the shipped tiny video width sweep on a real local Ray, then fit and report
def test_tiny_video_width_sweep_end_to_end(tmp_path):
    """issue 31's acceptance: both families complete, every run below its copy-last-frame baseline, the fit and
    the report on video."""
    import os

    from ebt_scaling.sched.runner import cleanup_leftover_ray

    url = f"sqlite:///{tmp_path / 'v.db'}"
    env = {**os.environ, "EBT_SCALE_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ebt_scaling", *args], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=1500)

    try:
        r = cli("sweep", "--axis", "width", "--modality", "video", "--db", url, "--progress", "plain")
    finally:
        cleanup_leftover_ray()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "sweep video-width-tiny: 12 completed" in r.stdout  # 3 widths x 2 families x 2 seeds
    r = cli("runs", "--sweep", "video-width-tiny", "--db", url, "--format", "json")
    runs = json.loads(r.stdout)
    assert len(runs) == 12 and {x["family"] for x in runs} == {"ebt", "transformer_pp"}
    for run in runs:
        assert run["status"] == "completed", run
        assert run["final_val_loss"] < 0.8 * run["copy_loss"], run  # well below copying the last frame
    r = cli("fit", "--sweep", "video-width-tiny", "--db", url)
    assert r.returncode == 0 and "validation SmoothL1" in r.stdout, r.stdout + r.stderr
    r = cli("report", "--sweep", "video-width-tiny", "--db", url, "--out", str(tmp_path / "r.pdf"))
    assert r.returncode == 0 and (tmp_path / "r.pdf").stat().st_size > 10_000, r.stdout + r.stderr
