"""Training samples of a video store (issue 31): ``VideoData``, the frame-batch twin of ``sampler.StoreData``.

Samples are windows of ``seq_len + 1`` consecutive frames inside one clip, float32 (n, seq_len + 1, E): the
training loop feeds frames ``[:, :-1]`` and predicts ``[:, 1:]`` (``train/modality.py``). A clip of F frames holds
``W = F - seq_len`` windows (one when F = seq_len + 1, the paper's 16 + 1).

Standardisation (the one place it happens): every frame embedding is mapped to ``(x - mean) / std`` per dimension,
with the store's manifest ``stats`` (mean and std over every frame of the store; a dimension with std 0 keeps std
1). Losses, baselines and predictions are all in that space.

Split. A permutation of the clips drawn from ``split_seed`` (numpy ``default_rng``); its first
``max(1, round(val_fraction x clips))`` clips are validation, the rest training: exact sizes, a pure function of
the clip count, ``val_fraction`` and ``split_seed``, so every run of a sweep sees the same validation clips.

Order. Window ``j`` of the global batch of step ``s`` is a pure function of ``(seed, s, j)`` (``sampler.keyed``):
a training clip and an offset in it, uniformly. No generator state: resume needs the step only.

Validation set (fixed per sweep): the validation clips' windows in (clip, offset) order, ``n_windows`` of them
spread evenly over all (repeated when there are fewer). Selection set (issue 28): windows spread evenly over the
validation windows the evaluation set does not use (disjoint windows; with W = 1, disjoint clips).

Baselines (``baselines``, on the evaluation set, in the standardised space, SmoothL1 with beta 1 averaged over
every element as the models' loss): ``copy_loss`` predicts every next frame as the current one; ``mean_loss``
predicts the store's mean embedding (0 after standardisation).

The built-in source ``synthetic-video[:CLIPS]`` (``builtin_video_store``) is ``data/video.py``'s synthetic
source prepared into the data cache on first use (under its lock), keyed by its parameters: clips (default
``SYNTHETIC_VIDEO_CLIPS``), frame_dim (the model's), clip_frames (``sequence_len + 1``) and seed
``SYNTHETIC_VIDEO_SEED``.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import numpy as np

from ebt_scaling.config import STORE_PREFIX, SYNTHETIC_VIDEO, DataConfig, is_synthetic_video
from ebt_scaling.data.cache import Progress, cache_root, locked, stderr_progress
from ebt_scaling.data.sampler import keyed, store_path
from ebt_scaling.data.verify import MANIFEST
from ebt_scaling.data.video import FORMAT, KIND, VideoStore, prepare_video, verify_video_store
from ebt_scaling.errors import ConfigError, DataError

SYNTHETIC_VIDEO_CLIPS = 512  # clips of ``synthetic-video`` without a count (docs/video.md's measured tiny store)
SYNTHETIC_VIDEO_SEED = 0
_TAG_TRAIN = 11


def _smooth_l1(pred: np.ndarray, target: np.ndarray) -> float:
    """SmoothL1 (beta 1), mean over every element, in float64 (torch's ``smooth_l1_loss`` formula)."""
    d = np.abs(pred.astype(np.float64) - target.astype(np.float64))
    return float(np.where(d < 1.0, 0.5 * d * d, d - 0.5).mean())


def _manifest(source: str) -> dict[str, Any] | None:
    if not source.startswith(STORE_PREFIX):
        return None
    try:
        m = json.loads((store_path(source) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None  # opening it later says what is wrong
    return m if isinstance(m, dict) else None


def store_kind(source: str) -> str | None:
    """"video" or "text" for a ``store:DIR`` source whose manifest says which (None: not a store or unreadable)."""
    m = _manifest(source)
    return None if m is None else "video" if m.get("kind") == KIND else "text"


def store_frame_dim(source: str) -> int | None:
    """The frame_dim of a ``store:DIR`` video store (from its manifest), else None."""
    m = _manifest(source)
    if m is None or m.get("kind") != KIND:
        return None
    return int(m.get("params", {}).get("frame_dim"))


def check_modality(data: DataConfig, frame_dim: int | None) -> None:
    """Refuse (one ``ConfigError`` line) a text source for a video model (``frame_dim`` set), a video source for
    a text model and a video store of another frame_dim; pure and cheap (reads a store's manifest only), so that
    ``train``, the CLI and sweep planning can all call it before any training."""
    video_src = is_synthetic_video(data.source) or store_kind(data.source) == "video"
    if frame_dim is None and video_src:
        raise ConfigError(f"DataConfig.source: {data.source} holds video clips but the model is a text model; set "
                          "ModelConfig.frame_dim (ebt-scale train --frame-dim) for a video model, or use a text source")
    if frame_dim is not None and not video_src:
        raise ConfigError(f"DataConfig.source: {data.source} is a text source but the model is a video model "
                          f"(frame_dim {frame_dim}); use synthetic-video or store:DIR of a video store (ebt-scale "
                          "data prepare --modality video), or unset frame_dim for a text model")
    if frame_dim is not None and data.source.startswith(STORE_PREFIX):
        have = store_frame_dim(data.source)
        if have != frame_dim:
            raise ConfigError(f"ModelConfig.frame_dim: {frame_dim} differs from the video store's frame_dim {have} "
                              f"({data.source}); set frame_dim = {have}")


def synthetic_video_clips(source: str) -> int:
    return SYNTHETIC_VIDEO_CLIPS if source == SYNTHETIC_VIDEO else int(source.split(":", 1)[1])


def builtin_video_store(cfg: DataConfig, frame_dim: int, clip_frames: int,
                        progress: Progress | None = None) -> pathlib.Path:
    """The cache's store of ``synthetic-video[:CLIPS]`` for this frame size and clip length, prepared on first use
    (resumable; checked against its checksums when opened)."""
    progress = progress or stderr_progress
    clips = synthetic_video_clips(cfg.source)
    root = cache_root(cfg.cache_dir)
    name = f"synthetic-video-{clips}c-{frame_dim}e-{clip_frames}f-s{SYNTHETIC_VIDEO_SEED}-v{FORMAT}"
    out = root / "video" / name
    with locked(root, f"video-{name}"):
        if (out / MANIFEST).exists():
            try:
                verify_video_store(out, cache_dir=cfg.cache_dir)
                return out
            except DataError as exc:  # a killed preparation or a damaged file: seconds to prepare again
                progress(f"{exc}; preparing it again")
                shutil.rmtree(out)
        progress(f"preparing the synthetic video store ({clips} clips of {clip_frames} frames, frame_dim "
                 f"{frame_dim}) in {out}")
        out.mkdir(parents=True, exist_ok=True)
        prepare_video("synthetic", out, frame_dim=frame_dim, clip_frames=clip_frames, seed=SYNTHETIC_VIDEO_SEED,
                      synthetic_clips=clips, progress=progress)
    return out


class VideoData:
    """Train and validation windows of one video store (see the module doc): float32 (n, seq_len + 1, E),
    standardised."""

    entropy_rate = None  # no analytic floor for video
    vocab_size = 0  # no vocabulary: the loop's vocabulary check never refuses a video model

    def __init__(self, store: VideoStore, *, seq_len: int, val_fraction: float = 0.05, split_seed: int = 33,
                 seed: int = 0, name: str | None = None) -> None:
        self.store, self.seq_len, self.seed = store, int(seq_len), int(seed)
        self.name = name or f"store:{store.out}"
        self.frame_dim, f = store.frame_dim, store.clip_frames
        if f < self.seq_len + 1:
            raise ConfigError(f"ModelConfig.sequence_len: {self.seq_len} context frames need clips of "
                              f"{self.seq_len + 1} frames, the store's hold {f}; set sequence_len <= {f - 1} or "
                              f"prepare the store with --clip-frames {self.seq_len + 1}")
        self.windows_per_clip = f - self.seq_len
        stats = store.manifest.get("stats")
        if not stats:
            raise DataError(f"{store.out}: the video store's manifest has no stats; prepare it again")
        self.mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.asarray(stats["std"], dtype=np.float32)
        self.std = np.where(std > 0, std, np.float32(1.0))
        n = len(store)
        n_val = max(1, round(float(val_fraction) * n))
        if n - n_val < 1:
            raise DataError(f"{self.name}: {n} clip(s) leave none for training after the validation split "
                            f"(val_fraction {val_fraction}); use a larger store")
        perm = np.random.default_rng(int(split_seed)).permutation(n)
        self.val_clips, self.train_clips = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        self._first = np.cumsum([0] + [s["clips"] for s in store.manifest["shards"]])  # global clip -> shard
        self._val_cache: dict[int, np.ndarray] = {}
        self._baselines: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------------------------ reading
    def windows(self, clips: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Standardised windows (n, seq_len + 1, E) float32 of clips ``clips`` (store numbers) at ``offsets``."""
        out = np.empty((len(clips), self.seq_len + 1, self.frame_dim), dtype=np.float32)
        for r, (c, o) in enumerate(zip(clips.tolist(), offsets.tolist(), strict=True)):
            k = int(np.searchsorted(self._first, c, side="right") - 1)
            out[r] = self.store._maps[k][c - int(self._first[k]), o:o + self.seq_len + 1]
        return (out - self.mean) / self.std

    def _check_len(self, seq_len: int) -> None:
        if seq_len != self.seq_len:
            raise ValueError(f"seq_len {seq_len} differs from the sampler's {self.seq_len}")

    # ------------------------------------------------------------------------------------ training
    def sample_batch(self, step: int, indices: np.ndarray | list[int] | range) -> np.ndarray:
        """Rows ``indices`` of the global training batch of step ``step``: a pure function of (seed, step, index)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or step < 0):
            raise ValueError("step and sample indices must be non-negative")
        w = self.windows_per_clip
        pos = (keyed(_TAG_TRAIN, self.seed, step, idx) % np.uint64(len(self.train_clips) * w)).astype(np.int64)
        return self.windows(self.train_clips[pos // w], pos % w)

    def train_batch(self, step: int, batch_size: int, seq_len: int, rng: Any = None,
                    indices: np.ndarray | None = None) -> np.ndarray:
        """The training loop's entry (``StoreData.train_batch``'s call; ``rng`` is not used: the order is keyed)."""
        self._check_len(seq_len)
        return self.sample_batch(step, np.arange(batch_size) if indices is None else indices)

    @property
    def train_tokens(self) -> int:
        """Frames the training windows can predict (training clips x (clip_frames - 1)): the loop's
        ``train_tokens_available``."""
        return int(len(self.train_clips) * (self.store.clip_frames - 1))

    # ------------------------------------------------------------------------------------ validation
    def _val_positions(self) -> int:
        return len(self.val_clips) * self.windows_per_clip

    def _rows_at(self, pos: np.ndarray) -> np.ndarray:
        w = self.windows_per_clip
        return self.windows(self.val_clips[pos // w], pos % w)

    def _eval_pos(self, n_windows: int) -> np.ndarray:
        return np.linspace(0, self._val_positions() - 1, n_windows).round().astype(np.int64)

    def _val_rows(self, n_windows: int) -> np.ndarray:
        if n_windows not in self._val_cache:
            self._val_cache[n_windows] = self._rows_at(self._eval_pos(n_windows))
        return self._val_cache[n_windows]

    def val_batches(self, n_batches: int, batch_size: int, seq_len: int,
                    n_windows: int | None = None) -> list[np.ndarray]:
        """The fixed validation set in batches of ``batch_size`` rows: ``n_windows`` windows (None: ``n_batches x
        batch_size``), the same whatever the batch size."""
        self._check_len(seq_len)
        rows = self._val_rows(n_batches * batch_size if n_windows is None else n_windows)
        return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]

    def select_batches(self, batch_size: int, seq_len: int, n_eval_windows: int,
                       n_windows: int) -> list[np.ndarray]:
        """The selection set: ``n_windows`` windows spread over the validation windows the evaluation set of
        ``n_eval_windows`` does not use."""
        self._check_len(seq_len)
        free = np.setdiff1d(np.arange(self._val_positions()), self._eval_pos(n_eval_windows))
        if not free.size:
            raise DataError(f"{self.name}: the evaluation set's {n_eval_windows} windows use every validation window; "
                            "raise val_fraction or lower eval_tokens for a selection set")
        rows = self._rows_at(free[np.linspace(0, free.size - 1, n_windows).round().astype(np.int64)])
        return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]

    def baselines(self, n_windows: int) -> dict[str, float]:
        """``copy_loss`` and ``mean_loss`` on the evaluation set of ``n_windows`` windows (see the module doc)."""
        if n_windows not in self._baselines:
            rows = self._val_rows(n_windows)
            self._baselines[n_windows] = {"copy_loss": _smooth_l1(rows[:, :-1], rows[:, 1:]),
                                          "mean_loss": _smooth_l1(np.zeros_like(rows[:, 1:]), rows[:, 1:])}
        return self._baselines[n_windows]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "clips": len(self.store), "train_clips": len(self.train_clips),
                "val_clips": len(self.val_clips), "clip_frames": self.store.clip_frames, "frame_dim": self.frame_dim}


def open_video_data(cfg: DataConfig, sequence_len: int, frame_dim: int, *, seed: int = 0,
                    progress: Progress | None = None) -> VideoData:
    """The training data of a video model: ``store:DIR`` of a video store (verified: sizes and checksums, and its
    fingerprint when the config holds one, as a token store's) or the cache's ``synthetic-video`` store. The
    modality and frame size are checked first (``check_modality``)."""
    check_modality(cfg, frame_dim)
    if is_synthetic_video(cfg.source):
        folder = builtin_video_store(cfg, frame_dim, sequence_len + 1, progress)
    else:
        folder = store_path(cfg.source)
    store = VideoStore(folder, cache_dir=cfg.cache_dir)
    cfg.check_store(store.manifest)  # the store a sweep planned on (its fingerprint, when the config holds one)
    return VideoData(store, seq_len=sequence_len, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed,
                     seed=seed, name=cfg.source)
