"""Video frame-embedding store (issue 31 item 2): clips of frames -> a frozen encoder -> float16 shards.

Layout of a store folder::

    manifest.json      kind "video", params (source, encoder, frame_dim, clip_frames, clips_per_shard, size, the
                       folder source's file-list hash; sdvae: the VAE folder's sha256, scaling and shift factors),
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
  videos:DIR           every video file under DIR, recursively (``VIDEO_SUFFIXES``, in the order of their relative
                       paths), decoded with PyAV (the ``video`` extra), each frame resized as frames:DIR does and cut
                       into clips the same way; a file that does not decode is skipped like an unreadable frames video

Every source gives frames of ``size`` x ``size`` pixels (bilinear, aspect ratio not kept). Encoders (frozen; a frame
(H, W, 3) uint8 -> frame_dim float32 values):

  patch                the dependency-free default: each frame is average-pooled over a ``grid`` x ``grid`` grid of
                       patches (3 x grid^2 values in [-1, 1]) and multiplied by a fixed Gaussian matrix drawn from
                       ``PATCH_SEED`` (3 grid^2 -> frame_dim, scaled by 1/sqrt(3 grid^2)), so a frame embedding is a
                       linear function of its coarse pixels
  sdvae:DIR            the paper's: a diffusers ``AutoencoderKL`` loaded from the local folder DIR (never downloaded),
                       pixels scaled to [-1, 1], the latent distribution's mean (minus ``shift_factor`` if the VAE
                       has one) times ``scaling_factor``, flattened channel-major (C, h, w): frame_dim = C h w (SD-VAE
                       at 224 px: 4 x 28 x 28 = 3136); the ``video`` extra

Writing is resumable: each shard is written to a temporary name, fsynced, renamed and only then recorded in the
manifest with ``items_done``; a rerun with the same arguments checks the recorded shards' checksums, skips the
items they hold and ends with the same bytes as an uninterrupted run. An unreadable video (an image or a video file
that does not decode) is skipped whole, counted in the manifest and named in one progress line.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ebt_scaling.data.cache import atomic_write_bytes, atomic_write_json, sha256_file
from ebt_scaling.data.store import writer_lock
from ebt_scaling.data.verify import MANIFEST, file_stamp, remembered_check
from ebt_scaling.data.verify import shard_name as _shard_name
from ebt_scaling.errors import ConfigError, DataError

FORMAT = 1
KIND = "video"
DTYPE = "<f2"
PATCH_SEED = 20250531  # the fixed projection of the ``patch`` encoder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv", ".3gp")
EXTRA = "pip install 'ebt-scaling[video]'"  # PyAV and diffusers (pyproject.toml)
PROGRESS_EVERY_S = 30.0  # at most one "encoded ..." progress line per this many seconds

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


SDVAE_HINT = ("pass --encoder sdvae:DIR with DIR a local diffusers AutoencoderKL folder (config.json and "
              "diffusion_pytorch_model.safetensors), e.g. the SD-VAE stabilityai/sd-vae-ft-mse downloaded beforehand")


def parse_encoder(encoder: str) -> tuple[str, str]:
    """(kind, argument) of ``patch`` or ``sdvae:DIR``; ConfigError (one line, exit 2) otherwise."""
    if encoder == "patch":
        return "patch", ""
    kind, _, arg = encoder.partition(":")
    if kind == "sdvae":
        d = pathlib.Path(arg).expanduser()
        if not arg:
            raise ConfigError(f"--encoder {encoder}: no folder given; {SDVAE_HINT}")
        if not (d / "config.json").is_file():
            raise ConfigError(f"--encoder {encoder}: {arg} is not a folder with a config.json; {SDVAE_HINT}")
        return "sdvae", str(d)
    raise ConfigError(f"--encoder {encoder!r}: use patch (the dependency-free default) or sdvae:DIR (a local SD-VAE)")


def _folder_sha256(d: pathlib.Path) -> str:
    """sha256 over the files directly in ``d`` (name and content): which VAE weights encoded a store."""
    h = hashlib.sha256()
    for p in sorted(q for q in d.iterdir() if q.is_file()):
        h.update(f"{p.name}\0{sha256_file(p)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def sdvae_encoder(vae_dir: str, *, device: str = "cpu", batch_frames: int = 32, progress: Progress = lambda s: None
                  ) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """A frozen diffusers ``AutoencoderKL`` from the local folder ``vae_dir`` (``local_files_only``: nothing is
    downloaded) -> (encode, info). encode: frames (F, H, W, 3) uint8 -> (F, C h w) float32, the latent mean
    (minus ``shift_factor`` when the VAE has one) times ``scaling_factor``, in batches of ``batch_frames`` frames on
    ``device``. info: what identifies the encoder in a store's params (the folder's sha256, the scaling)."""
    d = pathlib.Path(parse_encoder(f"sdvae:{vae_dir}")[1])
    try:
        cls = json.loads((d / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"--encoder sdvae:{vae_dir}: {d / 'config.json'} is not readable JSON "
                          f"({type(e).__name__}); {SDVAE_HINT}") from None
    if cls != "AutoencoderKL":
        raise ConfigError(f"--encoder sdvae:{vae_dir}: {d / 'config.json'} describes a {cls!r}, not an AutoencoderKL; "
                          f"{SDVAE_HINT}")
    if batch_frames < 1:
        raise ConfigError(f"--encode-batch {batch_frames}: use >= 1 frames per encoder batch")
    try:
        import torch
        from diffusers import AutoencoderKL
    except ImportError:
        raise ConfigError(f"--encoder sdvae:DIR needs diffusers, which is not installed; {EXTRA}") from None
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: not a torch device; use cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    progress(f"loading the AutoencoderKL from {d} ({dev})")
    try:
        # low_cpu_mem_usage needs accelerate (not a dependency); asking for the plain load avoids diffusers' warning
        vae = AutoencoderKL.from_pretrained(str(d), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"--encoder sdvae:{vae_dir}: the AutoencoderKL does not load ({type(e).__name__}: "
                          f"{first}); {SDVAE_HINT}") from None
    vae = vae.to(dev).eval().requires_grad_(False)
    scale = float(vae.config.scaling_factor)
    shift = vae.config.get("shift_factor", None)
    shift = None if shift is None else float(shift)

    def encode(frames: np.ndarray) -> np.ndarray:
        out = []
        for k in range(0, len(frames), batch_frames):
            x = torch.from_numpy(np.ascontiguousarray(frames[k:k + batch_frames])).to(dev)  # (b, H, W, 3) uint8
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (b, 3, H, W) in [-1, 1]
            with torch.inference_mode():
                z = vae.encode(x).latent_dist.mean  # (b, C, H/f, W/f), f = 2^(down blocks - 1)
            if shift is not None:
                z = z - shift
            out.append((z * scale).flatten(1).float().cpu().numpy())  # (b, C h w)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    return encode, {"vae_sha256": _folder_sha256(d), "scaling_factor": scale, "shift_factor": shift}


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


def _video_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """Every video file under ``folder`` (any depth), in the order of their relative paths."""
    found = [p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _decode_video(path: pathlib.Path, size: int) -> np.ndarray:
    """Every frame of the first video stream of ``path`` (PyAV), RGB, resized to size x size as ``_read_frames``
    does: (F, size, size, 3) uint8. A file without a decodable frame raises ValueError."""
    import av
    from PIL import Image

    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame/slice threads: the same frames, faster
        for frame in container.decode(stream):
            frames.append(np.asarray(frame.to_image().resize((size, size), Image.Resampling.BILINEAR)))
    if not frames:
        raise ValueError("no decodable frame")
    return np.stack(frames)


def parse_video_source(source: str) -> tuple[str, str]:
    """(kind, argument) of ``synthetic``, ``frames:DIR`` or ``videos:DIR``; DataError (one line) otherwise."""
    if source == "synthetic":
        return "synthetic", ""
    kind, _, arg = source.partition(":")
    if kind in ("frames", "videos") and arg:
        if not pathlib.Path(arg).is_dir():
            raise DataError(f"--source {source}: {arg} is not a folder; pass a folder of {kind}")
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise DataError(f"--source {kind}:DIR needs Pillow, which is not installed; pip install pillow") \
                from None
        if kind == "videos":
            try:
                import av  # noqa: F401
            except ImportError:
                raise DataError(f"--source videos:DIR needs PyAV, which is not installed; {EXTRA} (or decode the "
                                "videos to frame images and use --source frames:DIR)") from None
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
    if kind == "videos":
        import av

        videos, read, errors = _video_files(pathlib.Path(arg)), _decode_video, (av.FFmpegError, OSError, ValueError)
    else:  # PIL raises OSError subclasses for undecodable images
        videos, read, errors = _videos_in(pathlib.Path(arg)), _read_frames, (OSError, ValueError)
    for i in range(start, len(videos)):
        try:
            frames = read(videos[i], size)
        except errors as e:
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


def prepare_video(source: str, out: pathlib.Path | str, *, frame_dim: int | None = None, clip_frames: int = 17,
                  clips_per_shard: int = 256, size: int = 32, grid: int = 8, seed: int = 0,
                  synthetic_clips: int = 1024, encoder: str = "patch", device: str = "cpu", batch_frames: int = 32,
                  progress: Progress = lambda s: None) -> dict[str, Any]:
    """Encode the clips of ``source`` into the store at ``out`` (resuming a killed run); returns the manifest.

    ``encoder``: ``patch`` (``frame_dim`` values, default 64) or ``sdvae:DIR`` (frame_dim = the VAE's latent size at
    ``size`` px, found by encoding one black frame; a ``frame_dim`` that disagrees is refused). ``device`` and
    ``batch_frames`` are the SD-VAE's (not part of the store's identity)."""
    out = pathlib.Path(out)
    parse_video_source(source)
    kind, vae_dir = parse_encoder(encoder)
    if clip_frames < 2:
        raise DataError(f"--clip-frames {clip_frames}: a clip needs context frames and a next frame; use >= 2")
    if size < 1:
        raise ConfigError(f"--size {size}: frames need >= 1 pixel a side (the paper: 224)")
    extra: dict[str, Any] = {}
    if kind == "patch":
        frame_dim = 64 if frame_dim is None else frame_dim
        encode = patch_encoder(frame_dim, grid)
    else:
        encode, extra = sdvae_encoder(vae_dir, device=device, batch_frames=batch_frames, progress=progress)
        latent = encode(np.zeros((1, size, size, 3), np.uint8)).shape[1]
        if frame_dim is not None and frame_dim != latent:
            raise ConfigError(f"--frame-dim {frame_dim}: the SD-VAE gives {latent} values per {size}x{size} frame; "
                              f"leave --frame-dim out (or pass {latent}), or change --size")
        frame_dim, grid = latent, None
        progress(f"SD-VAE at {size}x{size} px: frame_dim {latent}, scaling_factor {extra['scaling_factor']:g}")
    params = {"source": source, "encoder": kind, "grid": grid, "frame_dim": frame_dim,
              "clip_frames": clip_frames, "clips_per_shard": clips_per_shard, "size": size, "seed": seed,
              "synthetic_clips": synthetic_clips if source == "synthetic" else None,
              "listing_sha256": _listing_sha256(source), **extra}
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
        total, t_last, frames_done = _items_total(source, params), time.monotonic(), 0
        for i, clips in iter_items(source, params, m["items_done"], progress):
            if clips is None:
                skipped += 1
                continue
            if kind == "patch":
                buf.extend(encode(c) for c in clips)
            elif clips:  # the SD-VAE encodes an item's frames in batches across its clips
                buf.extend(np.split(encode(np.concatenate(clips)), len(clips)))
            frames_done += len(clips) * clip_frames
            if len(buf) >= clips_per_shard:
                flush(i + 1)
            if time.monotonic() - t_last >= PROGRESS_EVERY_S:
                t_last = time.monotonic()
                progress(f"encoded {i + 1:,} of {total:,} items ({m['clips'] + len(buf):,} clips, {frames_done:,} "
                         "frames this run)")
        if buf:
            flush(total)
        m["items_done"], m["skipped"], m["complete"] = total, skipped, True
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
    if kind == "videos":
        return len(_video_files(pathlib.Path(arg)))
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
