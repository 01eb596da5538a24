"""The video frame-embedding store (issue 31 item 2): synthetic clips, the patch encoder, folder-of-frames
sources, resumable writing after kill -9, checksums, and ``ebt-scale data prepare --modality video``."""

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
from ebt_scaling.data.video import (
    VideoStore,
    parse_video_source,
    patch_encoder,
    prepare_video,
    synthetic_clip,
    verify_video_store,
)
from ebt_scaling.errors import DataError


def test_synthetic_clips_are_deterministic_moving_shapes():
    a, b = synthetic_clip(7, 3, 17), synthetic_clip(7, 3, 17)
    assert a.shape == (17, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synthetic_clip(7, 4, 17))
    assert not np.array_equal(a, synthetic_clip(8, 3, 17))
    # something is drawn in every frame (the shapes stay inside it: they bounce) and it moves
    assert all(a[t].any() for t in range(17))
    assert sum(not np.array_equal(a[t], a[t + 1]) for t in range(16)) >= 8


def test_synthetic_embeddings_carry_the_motion():
    """Learnable structure, not noise: through the patch encoder, extrapolating the last two frame embeddings
    predicts the next one far better than copying the last one, and copying far better than the mean."""
    import torch
    import torch.nn.functional as F

    enc = patch_encoder(32)
    c = torch.from_numpy(np.stack([enc(synthetic_clip(0, i, 9)) for i in range(64)])).double()
    c = (c - c.mean((0, 1))) / c.std((0, 1))
    nxt = c[:, 2:]
    copy = float(F.smooth_l1_loss(c[:, 1:-1], nxt))
    extrapolate = float(F.smooth_l1_loss(2 * c[:, 1:-1] - c[:, :-2], nxt))
    mean = float(F.smooth_l1_loss(torch.zeros_like(nxt), nxt))
    assert extrapolate < 0.6 * copy and copy < 0.2 * mean, (extrapolate, copy, mean)


def test_patch_encoder_is_fixed_and_linear_in_the_pooled_pixels():
    enc = patch_encoder(16, grid=4)
    clip = synthetic_clip(0, 0, 3)
    e = enc(clip)
    assert e.shape == (3, 16) and e.dtype == np.float32
    assert np.array_equal(e, patch_encoder(16, grid=4)(clip))  # fixed projection
    black = np.zeros((1, 32, 32, 3), np.uint8)
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    np.testing.assert_allclose(enc(black), -enc(white), rtol=1e-6)  # pixels map to [-1, 1] before the projection
    with pytest.raises(DataError, match="smaller than"):
        enc(np.zeros((1, 2, 2, 3), np.uint8))


def _same_store(a: pathlib.Path, b: pathlib.Path) -> None:
    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    assert ma == mb
    for s in ma["shards"]:
        assert (a / f"{s['name']}.bin").read_bytes() == (b / f"{s['name']}.bin").read_bytes()


KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
from ebt_scaling.data.video import prepare_video
def progress(line):
    if line.startswith("shard shard-00000"):
        os.kill(os.getpid(), signal.SIGKILL)
prepare_video("synthetic", sys.argv[1], synthetic_clips=40, clips_per_shard=16, frame_dim=8, progress=progress)
"""


def test_kill_and_rerun_gives_the_same_shards_and_checksums(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    m = prepare_video("synthetic", whole, synthetic_clips=40, clips_per_shard=16, frame_dim=8)
    assert m["complete"] and m["clips"] == 40 and [s["clips"] for s in m["shards"]] == [16, 16, 8]
    r = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_SHARD, str(killed)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    half = json.loads((killed / "manifest.json").read_text())
    assert not half["complete"] and len(half["shards"]) == 1
    (killed / "shard-00001.bin").write_bytes(b"partial")  # an unrecorded shard of the killed run is rewritten
    lines: list[str] = []
    prepare_video("synthetic", killed, synthetic_clips=40, clips_per_shard=16, frame_dim=8, progress=lines.append)
    assert any("resuming after 1 recorded shard" in x for x in lines)
    _same_store(whole, killed)
    store = VideoStore(killed)
    assert len(store) == 40 and store.all().shape == (40, 17, 8)


def test_corrupt_shard_and_other_settings_are_one_line(tmp_path):
    out = tmp_path / "s"
    prepare_video("synthetic", out, synthetic_clips=4, frame_dim=8)
    with pytest.raises(DataError, match="other settings"):
        prepare_video("synthetic", out, synthetic_clips=5, frame_dim=8)
    shard = out / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        VideoStore(out)
    not_a_store = tmp_path / "other"
    not_a_store.mkdir()
    (not_a_store / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a token store"):
        prepare_video("synthetic", not_a_store, synthetic_clips=4)


def test_folder_of_frames_with_an_unreadable_video(tmp_path):
    from PIL import Image

    src = tmp_path / "frames"
    for v in range(2):  # two readable videos of 20 frames: one clip of 17 each (the 3 left over are dropped)
        d = src / f"video{v}"
        d.mkdir(parents=True)
        for t, frame in enumerate(synthetic_clip(1, v, 20, size=24)):
            Image.fromarray(frame).save(d / f"{t:04d}.png")
    bad = src / "video2"
    bad.mkdir()
    (bad / "0000.png").write_bytes(b"not an image")
    lines: list[str] = []
    m = prepare_video(f"frames:{src}", tmp_path / "out", frame_dim=8, progress=lines.append)
    assert m["complete"] and m["clips"] == 2 and m["skipped"] == 1
    assert sum("skipped unreadable video" in x and "video2" in x for x in lines) == 1
    all_frames = VideoStore(tmp_path / "out").all().astype(np.float64).reshape(-1, 8)
    np.testing.assert_allclose(m["stats"]["mean"], all_frames.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m["stats"]["std"], all_frames.std(0), rtol=1e-7)
    # frames are resized to the store's size, so a folder and the synthetic frames encode alike
    clips = VideoStore(tmp_path / "out").all()
    enc = patch_encoder(8)
    bilinear = Image.Resampling.BILINEAR
    first = np.stack([np.asarray(Image.open(src / "video0" / f"{t:04d}.png").convert("RGB").resize((32, 32), bilinear))
                      for t in range(17)])
    np.testing.assert_allclose(clips[0], enc(first), atol=2e-3)
    # a resumed run must read the same files
    m2 = json.loads((tmp_path / "out" / "manifest.json").read_text())
    m2["complete"] = False
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(m2))
    Image.fromarray(synthetic_clip(1, 9, 1, size=24)[0]).save(src / "video0" / "9999.png")
    with pytest.raises(DataError, match="source folder .* changed"):
        prepare_video(f"frames:{src}", tmp_path / "out", frame_dim=8)


def test_sources_that_cannot_run_say_so(tmp_path):
    with pytest.raises(DataError, match="synthetic, frames:DIR or videos:DIR"):
        parse_video_source("text:foo")
    with pytest.raises(DataError, match="not a folder"):
        parse_video_source(f"frames:{tmp_path / 'missing'}")
    try:
        import av  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="PyAV"):
            parse_video_source(f"videos:{tmp_path}")


def test_cli_prepare_video(tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["data", "prepare", "--modality", "video", "--source", "synthetic", "--out", str(out),
                                      "--clips", "6", "--frame-dim", "8", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["clips"] == 6 and s["params"]["frame_dim"] == 8
    assert verify_video_store(out)["complete"]
    r = CliRunner().invoke(app, ["data", "prepare", "--modality", "video", "--source", "videos:/nonexistent",
                                      "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "not a folder" in r.output
    r = CliRunner().invoke(app, ["data", "prepare", "--modality", "audio", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "--modality" in r.output
    assert os.listdir(out)


def test_video_store_verification_is_cached_until_a_shard_changes(tmp_path, monkeypatch):
    """Opening a video store hashes its shards once per store and machine (the token stores' cache, data/verify.py);
    a shard whose bytes change in place - same size, mtime put back - is still refused after a cached verify."""
    import ebt_scaling.data.video as video

    out, cache = tmp_path / "s", str(tmp_path / "cache")
    prepare_video("synthetic", out, synthetic_clips=6, clips_per_shard=3, frame_dim=8)
    hashed: list[str] = []
    real = video.sha256_file
    monkeypatch.setattr(video, "sha256_file", lambda p: hashed.append(pathlib.Path(p).name) or real(p))
    verify_video_store(out, cache_dir=cache)
    assert sorted(hashed) == ["shard-00000.bin", "shard-00001.bin"]
    VideoStore(out, cache_dir=cache)
    verify_video_store(out, cache_dir=cache)
    assert len(hashed) == 2  # remembered: no shard hashed again
    verify_video_store(out, cache_dir=str(tmp_path / "other"))
    assert len(hashed) == 4  # another machine's cache hashes again
    shard = out / "shard-00001.bin"
    st = shard.stat()
    with open(shard, "r+b") as f:  # in place: same inode and size
        data = bytearray(f.read())
        for i in range(len(data) // 4, len(data) // 2):
            data[i] ^= 0x5A
        f.seek(0)
        f.write(data)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: the ctime still moved
    assert shard.stat().st_size == st.st_size
    with pytest.raises(DataError, match="shard shard-00001.bin is missing or does not match its size/checksum"):
        VideoStore(out, cache_dir=cache)
    with pytest.raises(DataError, match="shard-00001.bin"):
        verify_video_store(out, cache_dir=cache)
    shard.unlink()
    with pytest.raises(DataError, match="shard shard-00001.bin is missing"):
        verify_video_store(out, cache_dir=cache)
