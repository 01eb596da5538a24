"""Video frame-embedding store (issue 31 item 2): clips of frames -> a frozen encoder -> float16 shards.

Layout of a store folder::

    manifest.json      kind "video", params (source, encoder, frame_dim, clip_frames, clips_per_shard, size, the
                       folder source's file-list hash),
                       per-shard clip count and sha256, where the source stands after the last recorded shard
                       (``items_done``), totals (clips, skipped videos), ``complete`` and per-dimension ``stats``
                       (mean, std of every frame) once finished
    shard-00000.bin    clips x clip_frames frames x frame_dim values, little-endian float16 (a shard holds whole
                       items: it is closed at the first item boundary with >= clips_per_shard clips)
    ...

A clip is ``clip_frames`` consecutive frames (16 context frames + the one to predict, as the paper). Sources
(``iter_items``) yield numbered items, each a list of clips of RGB uint8 frames (F, H, W, 3):

  synthetic            procedural soft-edged squares and discs with constant velocity bouncing off the walls (one
                       clip per item, item i drawn from a generator seeded by (seed, i): deterministic, learnable
                       structure - the next frame follows from the last two - and no files needed)
  frames:DIR           each sub-folder of DIR is one video (its images in name order; a DIR with images and
                       no sub-folders is one video), cut into consecutive non-overlapping clips; needs Pillow
  videos:DIR           video files, decoded with PyAV: refused in one line while ``av`` is not installed

The encoder is fixed and dependency-free (``patch``): each frame is average-pooled over a ``grid`` x ``grid``
grid of patches (3 x grid^2 values in [-1, 1]) and multiplied by a fixed Gaussian matrix drawn from
``PATCH_SEED`` (3 grid^2 -> frame_dim, scaled by 1/sqrt(3 grid^2)), so a frame embedding is a linear function of
its coarse pixels. The paper's SD-VAE encoder (diffusers) is not available here: diffusers is not installed.

Writing is resumable: each shard is written to a temporary name, fsynced, renamed and only then recorded in the
manifest with ``items_done``; a rerun with the same arguments checks the recorded shards' checksums, skips the
items they hold and ends with the same bytes as an uninterrupted run. An unreadable video (an image that does
not decode) is skipped whole, counted in the manifest and named in one progress line.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ebt_scaling.data.cache import atomic_write_bytes, atomic_write_json, sha256_file
from ebt_scaling.data.store import writer_lock
from ebt_scaling.data.verify import MANIFEST, file_stamp, remembered_check
from ebt_scaling.data.verify import shard_name as _shard_name
from ebt_scaling.errors import DataError

FORMAT = 1
KIND = "video"
DTYPE = "<f2"
PATCH_SEED = 20250531  # the fixed projection of the ``patch`` encoder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm")

Progress = Callable[[str], None]
Clip = np.ndarray  # (F, H, W, 3) uint8


# ------------------------------------------------------------------------------------------- the encoder
def patch_encoder(frame_dim: int, grid: int = 8) -> Callable[[np.ndarray], np.ndarray]:
    """frames (F, H, W, 3) uint8 -> embeddings (F, frame_dim) float32: grid x grid patch means, fixed projection."""
    if grid < 1 or frame_dim < 1:
        raise DataError(f"patch encoder: grid and frame_dim must be >= 1, got {grid}, {frame_dim}")
    n_in = 3 * grid * grid
    proj = np.random.default_rng(PATCH_SEED).standard_normal((n_in, frame_dim)) / np.sqrt(n_in)

    def encode(frames: np.ndarray) -> np.ndarray:
        f, h, w, _ = frames.shape
        if h < grid or w < grid:
            raise DataError(f"patch encoder: frames of {h}x{w} pixels are smaller than the {grid}x{grid} grid")
        x = frames.astype(np.float64) / 127.5 - 1.0
        rows = np.linspace(0, h, grid + 1).astype(int)  # patch edges: areas differ by at most one pixel row
        cols = np.linspace(0, w, grid + 1).astype(int)
        pooled = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=1), cols[:-1], axis=2)  # (F, g, g, 3) sums
        area = np.outer(np.diff(rows), np.diff(cols))[None, :, :, None]
        return ((pooled / area).reshape(f, n_in) @ proj).astype(np.float32)

    return encode


# ------------------------------------------------------------------------------------------- sources
EDGE_PX = 2.0  # width of the synthetic shapes' soft edges (logistic), in pixels


def synthetic_clip(seed: int, index: int, frames: int, size: int = 32, speed: float = 1.0) -> Clip:
    """Clip ``index`` of the synthetic source: 1-3 soft-edged squares or discs, constant velocity (``speed`` x a draw
    from U[-2, 2] pixels per frame per axis; ``speed`` > 1: ``ebt-scale think``'s shifted OOD clips), bouncing off the
    walls, added onto a black frame. The soft edges make a patch's mean vary smoothly with an object's position, so
    the motion survives the patch encoder: extrapolating the last two embeddings beats copying the last one
    (tests/test_video_data.py); with hard edges it did not."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(1, 4))
    radius = rng.uniform(3.0, size / 5, n)
    pos = rng.uniform(radius[:, None], size - radius[:, None], (n, 2))  # (n, 2) centre (y, x)
    vel = rng.uniform(-2.0, 2.0, (n, 2)) * speed
    colour = rng.integers(64, 256, (n, 3)).astype(np.float64)
    square = rng.random(n) < 0.5
    yy, xx = np.mgrid[0:size, 0:size] + 0.5

    def inside(z: np.ndarray) -> np.ndarray:  # soft indicator of z > 0
        return 1.0 / (1.0 + np.exp(-z / EDGE_PX))

    out = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        img = np.zeros((size, size, 3))
        for j in range(n):
            dy, dx = np.abs(yy - pos[j, 0]), np.abs(xx - pos[j, 1])
            mask = inside(radius[j] - dy) * inside(radius[j] - dx) if square[j] else \
                inside(radius[j] - np.sqrt(dy * dy + dx * dx))
            img += mask[..., None] * colour[j]
        out[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        pos += vel
        for ax in range(2):  # reflect off the walls
            lo, hi = pos[:, ax] < radius, pos[:, ax] > size - radius
            pos[lo, ax] = 2 * radius[lo] - pos[lo, ax]
            pos[hi, ax] = 2 * (size - radius[hi]) - pos[hi, ax]
            vel[lo | hi, ax] *= -1
    return out


def _videos_in(folder: pathlib.Path) -> list[pathlib.Path]:
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    return subs if subs else [folder]


def _read_frames(video: pathlib.Path, size: int) -> np.ndarray:
    from PIL import Image

    frames = []
    for p in sorted(q for q in video.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(p) as im:
            frames.append(np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)))
    return np.stack(frames) if frames else np.zeros((0, size, size, 3), np.uint8)


def parse_video_source(source: str) -> tuple[str, str]:
    """(kind, argument) of ``synthetic``, ``frames:DIR`` or ``videos:DIR``; DataError (one line) otherwise."""
    if source == "synthetic":
        return "synthetic", ""
    kind, _, arg = source.partition(":")
    if kind in ("frames", "videos") and arg:
        if not pathlib.Path(arg).is_dir():
            raise DataError(f"--source {source}: {arg} is not a folder; pass a folder of {kind}")
        if kind == "frames":
            try:
                import PIL  # noqa: F401
            except ImportError:
                raise DataError("--source frames:DIR needs Pillow, which is not installed; pip install pillow") \
                    from None
        else:
            try:
                import av  # noqa: F401
            except ImportError:
                raise DataError("--source videos:DIR needs PyAV, which is not installed; pip install av (or "
                                "decode the videos to frames and use --source frames:DIR)") from None
            raise DataError("--source videos:DIR: decoding video files is not implemented yet; decode them to "
                            "frame images and use --source frames:DIR")
        return kind, arg
    raise DataError(f"--source {source!r}: a video source is synthetic, frames:DIR or videos:DIR")


def iter_items(source: str, params: dict[str, Any], start: int, progress: Progress
               ) -> Iterator[tuple[int, list[Clip] | None]]:
    """(item index, its clips, or None for an unreadable video) from item ``start`` on."""
    kind, arg = parse_video_source(source)
    f, size = params["clip_frames"], params["size"]
    if kind == "synthetic":
        for i in range(start, params["synthetic_clips"]):
            yield i, [synthetic_clip(params["seed"], i, f, size)]
        return
    videos = _videos_in(pathlib.Path(arg))
    for i in range(start, len(videos)):
        try:
            frames = _read_frames(videos[i], size)
        except (OSError, ValueError) as e:  # PIL raises OSError subclasses for undecodable images
            progress(f"skipped unreadable video {videos[i]}: {type(e).__name__}: {str(e)[:120]}")
            yield i, None
            continue
        yield i, [frames[k:k + f] for k in range(0, len(frames) - f + 1, f)]


# ------------------------------------------------------------------------------------------- the store
def _manifest(params: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "kind": KIND, "dtype": DTYPE, "params": params, "shards": [], "items_done": 0,
            "clips": 0, "skipped": 0, "complete": False}


def _shard_bytes(m: dict[str, Any], clips: int) -> int:
    p = m["params"]
    return clips * p["clip_frames"] * p["frame_dim"] * 2


def verify_video_store(out: pathlib.Path | str, *, require_complete: bool = True, cache_dir: str | None = None,
                       use_cache: bool = True) -> dict[str, Any]:
    """The manifest of the video store at ``out`` after every shard's size and sha256 are checked. A check that
    passed before on this machine for the same manifest and unchanged shards (size, mtime, ctime, inode) is not
    repeated: the token stores' verification cache (``verify.remembered_check``, under ``cache_root(cache_dir)``)."""
    out = pathlib.Path(out)
    try:
        raw = (out / MANIFEST).read_bytes()
        m = json.loads(raw)
    except (OSError, ValueError) as e:
        raise DataError(f"{out}: no readable {MANIFEST} ({type(e).__name__}); prepare it with "
                        "`ebt-scale data prepare --modality video --out DIR`") from None
    if not isinstance(m, dict) or m.get("kind") != KIND or m.get("format") != FORMAT:
        raise DataError(f"{out}: not a video store (format {FORMAT}, kind {KIND!r}); prepare one with "
                        "`ebt-scale data prepare --modality video`")
    if require_complete and not m["complete"]:
        raise DataError(f"{out}: the video store is incomplete; rerun the same `ebt-scale data prepare` to finish it")

    def bad(path: pathlib.Path) -> DataError:
        return DataError(f"{out}: shard {path.name} is missing or does not match its size/checksum in {MANIFEST}; "
                         "delete the folder and prepare it again")

    def stamps() -> dict[str, list[int]]:
        found = {}
        for s in m["shards"]:
            path = out / f"{s['name']}.bin"
            try:
                st = path.stat()
            except OSError:
                raise bad(path) from None
            if st.st_size != _shard_bytes(m, s["clips"]):
                raise bad(path)
            found[path.name] = file_stamp(st)
        return found

    def hash_all() -> dict[str, list[int]]:
        for s in m["shards"]:
            if sha256_file(out / f"{s['name']}.bin") != s["sha256"]:
                raise bad(out / f"{s['name']}.bin")
        return stamps()

    remembered_check(out, hashlib.sha256(raw).hexdigest(), stamps(), hash_all, cache_dir=cache_dir,
                     use_cache=use_cache)
    return m


def prepare_video(source: str, out: pathlib.Path | str, *, frame_dim: int = 64, clip_frames: int = 17,
                  clips_per_shard: int = 256, size: int = 32, grid: int = 8, seed: int = 0,
                  synthetic_clips: int = 1024, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Encode the clips of ``source`` into the store at ``out`` (resuming a killed run); returns the manifest."""
    out = pathlib.Path(out)
    parse_video_source(source)
    if clip_frames < 2:
        raise DataError(f"--clip-frames {clip_frames}: a clip needs context frames and a next frame; use >= 2")
    params = {"source": source, "encoder": "patch", "grid": grid, "frame_dim": frame_dim,
              "clip_frames": clip_frames, "clips_per_shard": clips_per_shard, "size": size, "seed": seed,
              "synthetic_clips": synthetic_clips if source == "synthetic" else None,
              "listing_sha256": _listing_sha256(source)}
    encode = patch_encoder(frame_dim, grid)
    with writer_lock(out):
        m = _start_or_resume(out, params, progress)
        if m["complete"]:
            progress(f"{out}: already complete ({m['clips']:,} clips)")
            return m
        buf: list[np.ndarray] = []
        skipped = m["skipped"]

        def flush(items_done: int) -> None:
            data = np.stack(buf).astype(DTYPE)  # (clips, F, E)
            name = _shard_name(len(m["shards"]))
            atomic_write_bytes(out / f"{name}.bin", data.tobytes())
            m["shards"].append({"name": name, "clips": len(buf), "sha256": sha256_file(out / f"{name}.bin")})
            m["clips"] += len(buf)
            m["items_done"], m["skipped"] = items_done, skipped
            atomic_write_json(out / MANIFEST, m)
            progress(f"shard {name}: {len(buf)} clips ({m['clips']:,} in all)")
            buf.clear()

        # A shard holds whole items only, so that a resumed run restarts at an item boundary.
        for i, clips in iter_items(source, params, m["items_done"], progress):
            if clips is None:
                skipped += 1
                continue
            buf.extend(encode(c) for c in clips)
            if len(buf) >= clips_per_shard:
                flush(i + 1)
        if buf:
            flush(_items_total(source, params))
        m["items_done"], m["skipped"], m["complete"] = _items_total(source, params), skipped, True
        m["stats"] = _stats(out, m)
        atomic_write_json(out / MANIFEST, m)
    if skipped:
        progress(f"skipped {skipped} unreadable video(s)")
    return m


def _listing_sha256(source: str) -> str | None:
    """sha256 of a folder source's file list (relative path, size): a resumed run must read the same files."""
    kind, arg = parse_video_source(source)
    if kind == "synthetic":
        return None
    root = pathlib.Path(arg)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(root)}\0{p.stat().st_size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _stats(out: pathlib.Path, m: dict[str, Any]) -> dict[str, list[float]]:
    """Per-dimension mean and std of every frame in the store (float64 sums in shard order): for standardising
    embeddings and for the mean-embedding baseline."""
    e = m["params"]["frame_dim"]
    n, s1, s2 = 0, np.zeros(e), np.zeros(e)
    for sh in m["shards"]:
        x = np.fromfile(out / f"{sh['name']}.bin", dtype=DTYPE).astype(np.float64).reshape(-1, e)
        n, s1, s2 = n + len(x), s1 + x.sum(0), s2 + (x * x).sum(0)
    mean = s1 / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean * mean, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist()}


def _items_total(source: str, params: dict[str, Any]) -> int:
    kind, arg = parse_video_source(source)
    return params["synthetic_clips"] if kind == "synthetic" else len(_videos_in(pathlib.Path(arg)))


def _start_or_resume(out: pathlib.Path, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        m = _manifest(params)
        atomic_write_json(path, m)
        return m
    m = verify_video_store(out, require_complete=False)
    if m["params"] != params and {**m["params"], "listing_sha256": None} == {**params, "listing_sha256": None}:
        raise DataError(f"{out}: the source folder {params['source']} changed since the recorded shards were "
                        "written; delete the store folder and prepare it again")
    if m["params"] != params:
        raise DataError(f"{out}: holds a video store prepared with other settings ({m['params']['source']}); "
                        "choose another --out or delete the folder")
    named = {f"{s['name']}.bin" for s in m["shards"]}
    for p in out.iterdir():  # a killed write's temporary file or an unrecorded shard
        if (p.name.startswith("shard-") and p.name not in named) or p.name.endswith(".tmp"):
            p.unlink()
    if not m["complete"]:
        progress(f"{out}: resuming after {len(m['shards'])} recorded shard(s), {m['clips']:,} clips")
    return m


class VideoStore:
    """Read a verified video store (``verify_video_store``; ``cache_dir``: where its verification is remembered):
    ``all()`` -> (N, clip_frames, frame_dim) float32."""

    def __init__(self, out: pathlib.Path | str, cache_dir: str | None = None) -> None:
        self.out = pathlib.Path(out)
        self.manifest = verify_video_store(self.out, cache_dir=cache_dir)
        p = self.manifest["params"]
        self.frame_dim, self.clip_frames = p["frame_dim"], p["clip_frames"]
        self._maps = [np.memmap(self.out / f"{s['name']}.bin", dtype=DTYPE, mode="r",
                                shape=(s["clips"], self.clip_frames, self.frame_dim))
                      for s in self.manifest["shards"]]

    def __len__(self) -> int:
        return int(self.manifest["clips"])

    def all(self) -> np.ndarray:
        """Every clip, (N, clip_frames, frame_dim) float32."""
        if not self._maps:
            return np.zeros((0, self.clip_frames, self.frame_dim), np.float32)
        return np.concatenate([np.asarray(mm, dtype=np.float32) for mm in self._maps])
