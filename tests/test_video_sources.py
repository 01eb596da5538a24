"""Video files and the SD-VAE encoder (issue 31 item 2, the ``video`` extra): ``videos:DIR`` decoded with PyAV
(tiny videos written by the test with PyAV's own encoders, a corrupt and a truncated file skipped and counted,
kill -9 and rerun giving the same shards), ``--encoder sdvae:DIR`` with a small randomly initialised diffusers
``AutoencoderKL`` saved by the test (the stored embeddings equal its latent mean x scaling_factor), and the
one-line refusals (missing VAE folder, a --frame-dim that disagrees, the extra not installed)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.data.video import VideoStore, prepare_video, synthetic_clip, verify_video_store
from ebt_scaling.errors import ConfigError

av = pytest.importorskip("av")  # the video extra: installed by scripts/setup.sh, so CI runs these tests

FRAMES = 20  # per test video; with 8-frame clips: 2 clips each, 4 frames left over


def _write_video(path: pathlib.Path, codec: str, seed: int, frames: int = FRAMES, size: int = 32) -> None:
    """A tiny video of the synthetic source's moving shapes, encoded with one of PyAV's built-in encoders."""
    clip = synthetic_clip(seed, 0, frames, size)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for a in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> pathlib.Path:
    """Three readable videos (mp4/mpeg4, webm/vp8 in a sub-folder, mkv/h264), a corrupt .mp4, a truncated .avi
    and a text file that is not a video."""
    d = tmp_path_factory.mktemp("videos")
    _write_video(d / "b.mp4", "mpeg4", 1)
    (d / "sub").mkdir()
    _write_video(d / "sub" / "c.webm", "libvpx", 2)
    _write_video(d / "a.mkv", "libx264", 3)
    (d / "broken.mp4").write_bytes(b"this is not a video file\n" * 40)
    _write_video(d / "cut.mp4", "mpeg4", 4)
    data = (d / "cut.mp4").read_bytes()
    (d / "cut.mp4").unlink()
    (d / "trunc.avi").write_bytes(data[: len(data) // 2])  # an mp4's first half under another name: no index
    (d / "notes.txt").write_text("not a video")
    return d


def _same_store(a: pathlib.Path, b: pathlib.Path) -> None:
    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    assert ma == mb
    for s in ma["shards"]:
        assert (a / f"{s['name']}.bin").read_bytes() == (b / f"{s['name']}.bin").read_bytes()


def test_videos_source_decodes_clips_and_skips_unreadable_files(video_dir, tmp_path):
    lines: list[str] = []
    r = CliRunner().invoke(app, ["data", "prepare", "--modality", "video", "--source", f"videos:{video_dir}",
                                 "--out", str(tmp_path / "s"), "--clip-frames", "8", "--frame-dim", "16", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["clips"] == 6 and s["skipped"] == 2 and s["params"]["encoder"] == "patch"  # 3 videos x 2 clips
    skipped = [ln for ln in r.stderr.splitlines() if "skipped unreadable video" in ln]
    assert len(skipped) == 2 and "broken.mp4" in skipped[0] and "trunc.avi" in skipped[1], r.stderr
    m = verify_video_store(tmp_path / "s")
    assert m["complete"] and m["items_done"] == 5  # the 5 video files in relative-path order; notes.txt is not one
    clips = VideoStore(tmp_path / "s").all()
    assert clips.shape == (6, 8, 16)

    # the decoded frames are the written ones (lossy codecs: close, not equal), resized like frames:DIR; the order
    # is a.mkv, b.mp4, sub/c.webm (sorted relative paths)
    from ebt_scaling.data.video import _decode_video, patch_encoder

    for k, (name, seed) in enumerate([("a.mkv", 3), ("b.mp4", 1), ("sub/c.webm", 2)]):
        frames = _decode_video(video_dir / name, 32)
        assert frames.shape == (FRAMES, 32, 32, 3)
        truth = synthetic_clip(seed, 0, FRAMES, 32).astype(float)
        assert np.abs(frames - truth).mean() < 12, name  # codec loss on 32x32 frames; a wrong frame is ~40 off
        enc = patch_encoder(16)(frames[:16]).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(clips[2 * k:2 * k + 2].reshape(16, 16), enc)
    assert _decode_video(video_dir / "b.mp4", 12).shape == (FRAMES, 12, 12, 3)

    # a second run into another folder writes the same bytes (deterministic order and decoding)
    prepare_video(f"videos:{video_dir}", tmp_path / "again", clip_frames=8, frame_dim=16, progress=lines.append)
    _same_store(tmp_path / "s", tmp_path / "again")


KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
from ebt_scaling.data.video import prepare_video
def progress(line):
    if line.startswith("shard shard-00000"):
        os.kill(os.getpid(), signal.SIGKILL)
prepare_video(sys.argv[1], sys.argv[2], clip_frames=8, frame_dim=16, clips_per_shard=2, progress=progress)
"""


def test_videos_source_resumes_after_kill_9(video_dir, tmp_path):
    src = f"videos:{video_dir}"
    whole = tmp_path / "whole"
    prepare_video(src, whole, clip_frames=8, frame_dim=16, clips_per_shard=2)
    killed = tmp_path / "killed"
    p = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_SHARD, src, str(killed)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert len(json.loads((killed / "manifest.json").read_text())["shards"]) == 1
    lines: list[str] = []
    m = prepare_video(src, killed, clip_frames=8, frame_dim=16, clips_per_shard=2, progress=lines.append)
    assert any("resuming after 1 recorded shard" in ln for ln in lines)
    assert m["clips"] == 6 and m["skipped"] == 2 and len(m["shards"]) == 3
    _same_store(whole, killed)


def _tiny_vae(folder: pathlib.Path, down_blocks: int = 2):
    """A randomly initialised AutoencoderKL (4 latent channels, 8-16 channels, 2^(down_blocks-1) downsampling)
    saved to ``folder`` as a local SD-VAE would be."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * down_blocks,
                        up_block_types=("UpDecoderBlock2D",) * down_blocks,
                        block_out_channels=(8, 16)[:down_blocks], layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    vae.save_pretrained(folder)
    return vae.eval()


def test_sdvae_encoder_stores_latent_means_times_the_scaling_factor(tmp_path):
    pytest.importorskip("diffusers")
    import torch

    vae_dir = tmp_path / "vae"
    vae = _tiny_vae(vae_dir)
    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["data", "prepare", "--modality", "video", "--source", "synthetic", "--clips", "3",
                                 "--clip-frames", "5", "--size", "16", "--encoder", f"sdvae:{vae_dir}",
                                 "--encode-batch", "4", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["params"]
    assert p["encoder"] == "sdvae" and p["frame_dim"] == 4 * 8 * 8 and p["scaling_factor"] == 0.5  # 16 px / 2
    assert "frame_dim 256" in r.stderr
    got = VideoStore(out).all()  # (3, 5, 256) float32 from float16
    frames = np.stack([synthetic_clip(0, i, 5, 16) for i in range(3)]).reshape(15, 16, 16, 3)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        want = (vae.encode(x).latent_dist.mean * 0.5).reshape(3, 5, 256).numpy()
    assert np.abs(want).max() > 0.05  # not a degenerate encoder
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4)  # float16 storage
    assert np.abs(got - want / 0.5).max() > 10 * np.abs(got - want).max()  # the scaling factor is applied

    # the same run again is complete; a --frame-dim that disagrees, a folder without a VAE, a bad --device: one line
    r = CliRunner().invoke(app, ["data", "prepare", "--modality", "video", "--source", "synthetic", "--clips", "3",
                                 "--clip-frames", "5", "--size", "16", "--encoder", f"sdvae:{vae_dir}",
                                 "--out", str(out)])
    assert r.exit_code == 0 and "already complete" in r.output and "x 256 (sdvae at 16 px)" in r.output, r.output
    base = ["data", "prepare", "--modality", "video", "--source", "synthetic", "--clips", "3", "--size", "16",
            "--out", str(tmp_path / "x")]
    r = CliRunner().invoke(app, [*base, "--encoder", f"sdvae:{vae_dir}", "--frame-dim", "64"])
    assert r.exit_code == 2 and "--frame-dim 64: the SD-VAE gives 256 values per 16x16 frame" in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--encoder", f"sdvae:{tmp_path / 'nowhere'}"])
    assert r.exit_code == 2 and "pass --encoder sdvae:DIR" in r.output and len(r.output.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    r = CliRunner().invoke(app, [*base, "--encoder", f"sdvae:{tmp_path / 'empty'}"])
    assert r.exit_code == 2 and "does not load" in r.output and "pass --encoder sdvae:DIR" in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--encoder", "vqgan"])
    assert r.exit_code == 2 and "patch" in r.output and "sdvae:DIR" in r.output
    assert not (tmp_path / "x").exists()  # nothing written by a refused run
    if not torch.cuda.is_available():
        r = CliRunner().invoke(app, [*base, "--encoder", f"sdvae:{vae_dir}", "--device", "cuda"])
        assert r.exit_code == 2 and "CUDA is not available" in r.output and len(r.output.strip().splitlines()) == 1


def test_without_the_video_extra_each_source_and_encoder_names_it(tmp_path, monkeypatch):
    """The extra not installed (av / diffusers not importable): one line naming pip install 'ebt-scaling[video]'."""
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    monkeypatch.setitem(sys.modules, "diffusers", None)
    r = CliRunner().invoke(app, ["data", "prepare", "--modality", "video", "--source", f"videos:{tmp_path}",
                                 "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and "pip install 'ebt-scaling[video]'" in r.output, r.output
    r = CliRunner().invoke(app, ["data", "prepare", "--modality", "video", "--source", "synthetic",
                                 "--encoder", f"sdvae:{tmp_path / 'vae'}", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "needs diffusers" in r.output and "pip install 'ebt-scaling[video]'" in r.output
    # the patch encoder on the synthetic source needs neither
    m = prepare_video("synthetic", tmp_path / "c", synthetic_clips=2, frame_dim=8)
    assert m["complete"] and m["params"]["encoder"] == "patch"
    with pytest.raises(ConfigError, match="no folder given; pass --encoder sdvae:DIR"):
        prepare_video("synthetic", tmp_path / "d", encoder="sdvae")
    assert not (tmp_path / "d").exists()
