"""The video training path (issue 31 item 1): config identity, the frame-batch provider, train() and the CLI."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from ebt_scaling.config import SHARED_MODEL_FIELDS, DataConfig, ModelConfig, RunSpec, TrainConfig
from ebt_scaling.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _vm(family: str = "transformer_pp", frame_dim: int | None = 8, **kw) -> ModelConfig:
    base = dict(family=family, n_layer=1, n_embd=16, n_head=2, vocab_size=2, sequence_len=4, frame_dim=frame_dim)
    return ModelConfig(**{**base, **kw})


def test_frame_dim_is_hashed_only_when_set():
    """A text model's identity has no frame_dim (tests/test_config.py pins those hashes); a video model's does, so
    two frame sizes are two runs, and the modality follows the field."""
    t = TrainConfig(steps=2)
    for fam in ("transformer_pp", "ebt"):
        text = RunSpec(model=_vm(fam, None), train=t)
        assert "frame_dim" not in text.identity()["model"] and text.model.modality == "text"
        v8, v16 = (RunSpec(model=_vm(fam, e), train=t) for e in (8, 16))
        assert v8.identity()["model"]["frame_dim"] == 8 and v8.model.modality == "video"
        assert len({text.config_hash, v8.config_hash, v16.config_hash}) == 3
        assert RunSpec.from_dict(v8.to_dict()).config_hash == v8.config_hash
        old = text.to_dict()  # a config stored before the field existed reads back as a text model, same hash
        del old["model"]["frame_dim"]
        assert RunSpec.from_dict(old).config_hash == text.config_hash
    assert "frame_dim" in SHARED_MODEL_FIELDS  # both families use it: a T++ video run hashes it too
    with pytest.raises(ConfigError, match="frame_dim"):
        _vm(frame_dim=0)


def test_build_model_dispatches_on_frame_dim():
    from ebt_scaling.models import build_model
    from ebt_scaling.models.video import VideoEBT, VideoTransformerPP

    assert type(build_model(_vm("transformer_pp"))) is VideoTransformerPP
    m = build_model(_vm("ebt", 12))
    assert type(m) is VideoEBT and m.frame_dim == 12
    assert type(build_model(_vm("ebt", None))).__name__ == "EBT"


def test_synthetic_video_source_names():
    assert DataConfig(source="synthetic-video").source == "synthetic-video"
    assert DataConfig(source="synthetic-video:64").source == "synthetic-video:64"
    for bad in ("synthetic-video:", "synthetic-video:x", "synthetic-video:1"):
        with pytest.raises(ConfigError, match="DataConfig.source: .*clip count.*synthetic-video:N"):
            DataConfig(source=bad)
    with pytest.raises(ConfigError, match="DataConfig.sampling: the synthetic-video source has no documents"):
        DataConfig(source="synthetic-video", sampling="document")


# --------------------------------------------------------------------------------------- the provider
E, T, CLIPS = 8, 4, 24


@pytest.fixture(scope="module")
def vstore(tmp_path_factory):
    """A small video store of clips longer than a window (T + 3 frames: 3 windows per clip)."""
    from ebt_scaling.data.video import prepare_video

    out = tmp_path_factory.mktemp("vstore") / "vids"
    prepare_video("synthetic", out, frame_dim=E, clip_frames=T + 3, synthetic_clips=CLIPS, clips_per_shard=10)
    return out


def _data(vstore, **kw):
    from ebt_scaling.data.video import VideoStore
    from ebt_scaling.data.video_data import VideoData

    return VideoData(VideoStore(vstore), seq_len=T, **{"val_fraction": 0.25, "split_seed": 5, **kw})


def test_provider_split_windows_and_standardisation(vstore):
    from ebt_scaling.data.video import VideoStore

    d = _data(vstore)
    assert len(d.val_clips) == 6 and len(d.train_clips) == 18
    assert not set(d.val_clips) & set(d.train_clips) and set(d.val_clips) | set(d.train_clips) == set(range(CLIPS))
    again, other = _data(vstore), _data(vstore, split_seed=6)
    assert list(again.val_clips) == list(d.val_clips) and list(other.val_clips) != list(d.val_clips)
    # standardised with the manifest's stats: every window is (raw - mean) / std of consecutive frames of one clip
    raw = VideoStore(vstore).all()
    m = VideoStore(vstore).manifest["stats"]
    z = (raw - np.asarray(m["mean"], np.float32)) / np.asarray(m["std"], np.float32)
    assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3
    b = d.train_batch(3, 16, T)
    assert b.shape == (16, T + 1, E) and b.dtype == np.float32
    for row in b:  # each row is a window of a training clip
        hits = [(c, o) for c in d.train_clips for o in range(3) if np.array_equal(z[c, o:o + T + 1], row)]
        assert len(hits) == 1
    assert np.array_equal(b, d.train_batch(3, 16, T)) and not np.array_equal(b, d.train_batch(4, 16, T))
    assert np.array_equal(d.train_batch(3, 16, T, indices=np.array([2, 5])), b[[2, 5]])  # keyed by (step, index)
    # the validation set: validation clips only, the same windows whatever the batch size
    val = np.concatenate(d.val_batches(2, 5, T))
    assert val.shape == (10, T + 1, E) and np.array_equal(val, np.concatenate(d.val_batches(1, 10, T)))
    val_windows = {z[c, o:o + T + 1].tobytes() for c in d.val_clips for o in range(3)}
    assert all(r.tobytes() in val_windows for r in val)
    sel = np.concatenate(d.select_batches(4, T, 10, 8))
    assert not {r.tobytes() for r in sel} & {r.tobytes() for r in val}
    assert all(r.tobytes() in val_windows for r in sel)
    # baselines: SmoothL1 of copying the last frame and of predicting the mean (0), on the evaluation windows
    base = d.baselines(10)
    dd = np.abs(val[:, 1:].astype(np.float64) - val[:, :-1])
    assert base["copy_loss"] == pytest.approx(np.where(dd < 1, 0.5 * dd * dd, dd - 0.5).mean(), rel=1e-12)
    assert 0 < base["copy_loss"] < base["mean_loss"]
    assert d.train_tokens == 18 * (T + 2)


def test_provider_refusals(vstore):
    from ebt_scaling.data.video_data import check_modality, open_video_data
    from ebt_scaling.errors import DataError

    with pytest.raises(ConfigError, match=r"ModelConfig.sequence_len: 7 context frames need clips of 8 frames, "
                                          r"the store's hold 7; set sequence_len <= 6"):
        open_video_data(DataConfig(source=f"store:{vstore}"), 7, E)
    with pytest.raises(ConfigError, match=rf"ModelConfig.frame_dim: 16 differs from the video store's frame_dim {E}"
                                          rf" .*set frame_dim = {E}"):
        check_modality(DataConfig(source=f"store:{vstore}"), 16)
    with pytest.raises(ConfigError, match="holds video clips but the model is a text model; set ModelConfig.frame_dim"):
        check_modality(DataConfig(source=f"store:{vstore}"), None)
    with pytest.raises(ConfigError, match="holds video clips but the model is a text model"):
        check_modality(DataConfig(source="synthetic-video"), None)
    with pytest.raises(ConfigError, match="shakespeare is a text source but the model is a video model"):
        check_modality(DataConfig(source="shakespeare"), E)
    check_modality(DataConfig(source="synthetic"), None)  # text with text, video with video: fine
    check_modality(DataConfig(source=f"store:{vstore}"), E)
    with pytest.raises(DataError, match="leave none for training"):
        _data(vstore, val_fraction=0.99)
    with pytest.raises(DataError, match="changed since the sweep was planned"):  # a planned store's fingerprint
        open_video_data(DataConfig(source=f"store:{vstore}", store_fingerprint="0" * 64), T, E)


# --------------------------------------------------------------------------------------- train()
def _vspec(family="transformer_pp", steps=20, source="synthetic-video:32", ckpt=None, **train_kw):
    from ebt_scaling.config import CPU_VIDEO_EBT_S1, VIDEO_RECIPE_OVERRIDES

    opts = {**VIDEO_RECIPE_OVERRIDES["ebt_vid_s1"], **CPU_VIDEO_EBT_S1} if family == "ebt" else {}
    t = {**dict(steps=steps, batch_size=8, lr=3e-3, warmup_steps=2, eval_interval=10, eval_batches=2, log_interval=5,
                seed=0, threads=1), **train_kw}
    return RunSpec(model=_vm(family, E, **opts), train=TrainConfig(**t),
                   data=DataConfig(source=source, val_fraction=0.125), checkpoint_dir=str(ckpt) if ckpt else None)


@pytest.mark.parametrize("family", ["transformer_pp", "ebt"])
def test_video_run_trains_and_reports_the_contract(family, tmp_path):
    """One video run through train(): SmoothL1 as val_loss, no perplexity, the copy and mean baselines instead of
    the unigram, frames counted as tokens, the video FLOPs and parameter counts; the T++'s final val_loss is the
    SmoothL1 of its checkpointed weights on the provider's validation windows."""
    import torch

    from ebt_scaling.data.video_data import open_video_data
    from ebt_scaling.models import build_model
    from ebt_scaling.models.video import smooth_l1
    from ebt_scaling.models.video_flops import video_flops_per_frame, video_param_counts
    from ebt_scaling.records import ListSink
    from ebt_scaling.train.loop import train

    spec = _vspec(family, ckpt=tmp_path)
    sink = ListSink()
    r = train(spec, sink)
    assert r.status == "completed" and r.steps == 20 and r.final_val_ppl is None
    assert set(r.extra) >= {"copy_loss", "mean_loss"} and "unigram_loss" not in r.extra
    data = open_video_data(spec.data, T, E)
    assert r.extra["copy_loss"] == data.baselines(16)["copy_loss"]
    assert r.tokens == 20 * 8 * T and sink.series("tokens")[-1] == (20, float(r.tokens))
    fpf = {c: video_flops_per_frame(spec.model, E, c) for c in ("paper", "exact")}
    assert r.flops_per_token == fpf and sink.series("flops_exact")[-1][1] == r.tokens * fpf["exact"]
    model = build_model(spec.model)
    assert r.params == video_param_counts(spec.model, E)
    assert r.params["total"] == sum(p.numel() for p in model.parameters())
    names = {p.name for p in sink.points}
    assert {"train_loss", "val_loss", "lr", "grad_norm", "flops_paper", "wall_time_s"} <= names
    assert "val_ppl" not in names and [s for s, _ in sink.series("val_loss")] == [10, 20]
    assert r.final_val_loss == sink.series("val_loss")[-1][1] and r.final_val_loss < r.extra["initial_loss"]
    if family == "transformer_pp":
        model.load_state_dict(torch.load(pathlib.Path(r.checkpoint_dir) / "model.pt"))
        model.eval()
        with torch.no_grad():
            rows = torch.from_numpy(np.concatenate(data.val_batches(2, 8, T)))
            want = float(smooth_l1(model(rows[:, :-1]), rows[:, 1:]))
        assert r.final_val_loss == pytest.approx(want, rel=1e-6)
    else:
        assert {"alpha", "train_smooth_l1", "val_loss_initial"} <= names


def test_video_resume_reproduces_the_straight_run(tmp_path):
    """A video EBT (keyed noise, learnable alpha) resumed from its step-6 checkpoint equals the straight run."""
    from ebt_scaling.records import ListSink
    from ebt_scaling.train.loop import train

    spec = _vspec("ebt", steps=12, ckpt=tmp_path / "a", checkpoint_interval=6, eval_interval=6)
    a = ListSink()
    r1 = train(spec, a)
    ck6 = a.checkpoints[0][0]
    b = ListSink()
    r2 = train(spec.with_(checkpoint_dir=str(tmp_path / "b")), b, resume_from=ck6)
    for name in ("train_loss", "grad_norm", "alpha"):
        assert b.series(name) == [p for p in a.series(name) if p[0] > 6], name
    assert b.series("val_loss") == a.series("val_loss")[1:]
    assert (r2.final_val_loss, r2.tokens, r2.extra["copy_loss"]) == (r1.final_val_loss, r1.tokens,
                                                                      r1.extra["copy_loss"])


def test_train_refuses_the_other_modality_before_training(vstore):
    from ebt_scaling.records import ListSink
    from ebt_scaling.train.loop import train

    sink = ListSink()
    with pytest.raises(ConfigError, match="is a text source but the model is a video model"):
        train(_vspec(source="synthetic").with_(data=DataConfig(source="synthetic", vocab_size=32)), sink)
    text = RunSpec(model=_vm("transformer_pp", None, vocab_size=32), train=TrainConfig(steps=2, threads=1),
                   data=DataConfig(source=f"store:{vstore}"))
    with pytest.raises(ConfigError, match="holds video clips but the model is a text model"):
        train(text, sink)
    with pytest.raises(ConfigError, match=f"differs from the video store's frame_dim {E}"):
        train(_vspec(source=f"store:{vstore}").with_(model=_vm("transformer_pp", 12)), sink)
    assert sink.points == []


def test_cli_trains_a_video_model(tmp_path):
    """`ebt-scale train` on synthetic-video: the video summary (SmoothL1 vs the baselines); bad pairs exit 2."""
    from typer.testing import CliRunner

    from ebt_scaling.cli.main import app

    base = ["train", "--preset", "nano", "--data", "synthetic-video:32", "--frame-dim", str(E), "--seq-len", str(T),
            "--steps", "4", "--batch-size", "4", "--threads", "1", "--progress", "off"]
    r = CliRunner().invoke(app, base + ["--family", "transformer_pp"])
    assert r.exit_code == 0, r.output
    assert "val loss (SmoothL1)" in r.output and "copy last frame" in r.output and "unigram" not in r.output
    r = CliRunner().invoke(app, base + ["--family", "ebt", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["final_val_ppl"] is None and {"copy_loss", "mean_loss"} <= set(out["extra"])
    assert out["spec"]["model"]["frame_dim"] == E and out["spec"]["model"]["step_size"] == 30.0
    for bad, needle in ((["--data", "synthetic"], "is a text source but the model is a video model"),
                        (["--recipe", "ebt_s2"], "a text recipe for a video model")):
        r = CliRunner().invoke(app, base + ["--family", "ebt"] + bad)
        assert r.exit_code == 2 and needle in r.output, r.output


@pytest.mark.slow
@pytest.mark.parametrize("family, steps", [("transformer_pp", 600), ("ebt", 1200)])
def test_both_families_end_below_the_copy_baseline(family, steps):
    """docs/video.md's measured tiny recipe through train(): 512 synthetic clips, 8 context frames, frame_dim 32,
    2 layers of width 64, batch 32, LR 3e-3 (the EBT: alpha 30, alpha LR x100)."""
    from ebt_scaling.config import CPU_VIDEO_EBT_S1, VIDEO_RECIPE_OVERRIDES
    from ebt_scaling.records import ListSink
    from ebt_scaling.train.loop import train

    opts = {**VIDEO_RECIPE_OVERRIDES["ebt_vid_s1"], **CPU_VIDEO_EBT_S1} if family == "ebt" else {}
    m = ModelConfig(family=family, n_layer=2, n_embd=64, n_head=4, vocab_size=2, sequence_len=8, frame_dim=32, **opts)
    t = TrainConfig(steps=steps, batch_size=32, lr=3e-3, warmup_steps=steps // 10, eval_interval=steps,
                    eval_batches=4, seed=0, threads=1)
    r = train(RunSpec(model=m, train=t, data=DataConfig(source="synthetic-video", val_fraction=0.125)), ListSink())
    assert r.status == "completed"
    assert r.final_val_loss < r.extra["copy_loss"] < r.extra["mean_loss"], (r.final_val_loss, r.extra)
