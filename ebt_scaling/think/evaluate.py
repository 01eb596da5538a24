"""Torch part of System-2 thinking: checkpoints -> perplexity per (steps, samples), energies per step.

Never imports the database (``service.py`` composes this with a Store).

Video runs (``ModelConfig.frame_dim`` set; ``train/modality.py``): the same grid and noise scheme on the run's
validation windows of frame embeddings (``VideoData.val_batches``), SmoothL1 per (steps, samples) instead of
perplexity (``VideoEBT.think_grid`` does the descent), per-frame energies instead of per-token ones, and as OOD the
synthetic source with another seed and faster motion (``synthetic-video-shift``) or ``store:DIR``, a video store of
the same frame_dim, standardised with the run's own statistics.

Sharing one descent across settings (exact, not an approximation): sample s of batch b starts from noise
drawn with its own generator (seed ``sample_seed(seed, b, s)``) and runs ``max(steps)`` inner steps; the
logits after k steps are exactly what ``EBT.think(idx, steps=k, samples=1, generator=<that generator>)``
returns (the step-j landscape and the Langevin draws do not depend on the total count), so every step count
of the grid is read off one descent. Setting (k, N) keeps, independently per (batch, position), the
candidate of minimum scored energy among samples 0..N-1 (``EBT.think``'s rule), so best-of-N for N' > N
never has a higher energy than N. Every setting sees the same batches and the same noise.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ebt_scaling.config import RunSpec
from ebt_scaling.data import TokenCorpus, load_corpus, open_data
from ebt_scaling.data import synthetic as syn
from ebt_scaling.data.sampler import PAD
from ebt_scaling.data.sources import load_documents
from ebt_scaling.errors import ConfigError, DataError
from ebt_scaling.models import build_model
from ebt_scaling.train.checkpoint import resolve_checkpoint
from ebt_scaling.train.modality import TEXT, VIDEO, inputs_targets, modality_of, target_count

if TYPE_CHECKING:
    from ebt_scaling.data.video_data import VideoData

SYNTHETIC_SHIFT = "synthetic-shift"
SHIFT_MIX = 0.5  # the shifted source: 0.5 x the training transition matrix + 0.5 x another seed's
SHIFT_SEED_OFFSET = 1
_OOD_PIECE_CHARS = 1 << 16
# said once per `think` (not per run): the same for every store-trained run
NO_STORE_OOD = ("no default OOD corpus for runs trained on a token store; pass --ood text:PATH (encoded with the "
                "store's tokenizer)")
_OOD_PIECES = 8
SENTENCE_TOKENS = 24  # positions of the sample sentence in the token-energy heat map
# Video (issue 31.5): the default OOD set of a synthetic-video run is the synthetic source with another seed and
# faster motion, encoded with the run's store's encoder and standardised with its statistics.
VIDEO_SHIFT = "synthetic-video-shift"
VIDEO_SHIFT_SEED_OFFSET = 1
VIDEO_SHIFT_SPEED = 2.0
NO_VIDEO_STORE_OOD = ("no default OOD set for video runs trained on a video store; pass --ood store:DIR (a video "
                      "store of the same frame_dim)")
ONCE = (NO_STORE_OOD, NO_VIDEO_STORE_OOD)  # said once per `think`, not once per run
SWEEP_MARKER = "ebt_checkpoint.json"  # written by ebt_scaling.sched.trainable next to a stored checkpoint


def sample_seed(seed: int, batch: int, sample: int) -> int:
    return (seed * 1_000_003 + batch * 7_919 + sample * 104_729) % (2**63 - 1)


# ------------------------------------------------------------------------------------------ checkpoints
def load_run_model(spec: RunSpec, checkpoint: str, device: torch.device) -> torch.nn.Module:
    """The model of ``spec`` with the weights of ``checkpoint``: a step folder, a root with LATEST, or a
    sweep's stored checkpoint (a folder with ``ebt_checkpoint.json`` naming its entry)."""
    if "://" in checkpoint:
        raise DataError(f"checkpoint {checkpoint} is in remote storage; copy it to a local folder and record "
                        "that path, then run think again")
    marker = pathlib.Path(checkpoint) / SWEEP_MARKER
    if marker.exists():
        try:
            entry = json.loads(marker.read_text()).get("entry")
        except ValueError:
            entry = None
        if entry:
            checkpoint = str(pathlib.Path(checkpoint) / entry)
    try:
        folder = resolve_checkpoint(checkpoint)
    except ConfigError:
        raise DataError(f"checkpoint {checkpoint} is missing or incomplete (no trainer.pt / LATEST); "
                        "re-train the run with a checkpoint_dir") from None
    meta_path = folder / "spec.json"
    if meta_path.exists():
        h = json.loads(meta_path.read_text()).get("config_hash")
        if h is not None and h != spec.config_hash:
            raise DataError(f"checkpoint {folder} belongs to another run (config hash {str(h)[:12]}.. vs "
                            f"{spec.config_hash[:12]}..); fix the run's checkpoint_dir")
    model = build_model(spec.model)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ data
def _windows(stream: np.ndarray, n_batches: int, batch_size: int, seq_len: int) -> list[np.ndarray]:
    """``n_batches`` batches of windows of seq_len + 1 tokens evenly spread over ``stream``."""
    if stream.size < seq_len + 1:
        raise DataError(f"OOD corpus has {stream.size} tokens, fewer than sequence_len+1 = {seq_len + 1}; "
                        "use a larger corpus")
    total = n_batches * batch_size
    starts = np.linspace(0, stream.size - seq_len - 1, total).round().astype(np.int64)
    w = np.asarray(stream[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
    return [w[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def default_ood(train_source: str) -> str | None:
    """The OOD corpus used when none is given: synthetic -> synthetic-shift; text -> kjv when Debian's
    ``bible`` program is installed (else shakespeare when the run was not trained on it); None if none."""
    if train_source == "synthetic":
        return SYNTHETIC_SHIFT
    if train_source != "kjv" and shutil.which("bible"):
        return "kjv"
    if train_source != "shakespeare":
        return "shakespeare"
    return None


def ood_label(source: str) -> str:
    if source.startswith(("text:", "store:")):
        kind, _, path = source.partition(":")
        return f"{kind}:" + pathlib.Path(path).name
    return source


def ood_batches(source: str, corpus: TokenCorpus, spec: RunSpec, n_batches: int, batch_size: int,
                seq_len: int) -> list[np.ndarray]:
    """Batches of an OOD corpus in the run's token space (encoded with the run's own tokenizer)."""
    if source == SYNTHETIC_SHIFT:
        if corpus.name != "synthetic":
            raise DataError(f"--ood {SYNTHETIC_SHIFT}: only for runs trained on the synthetic source (this run: "
                            f"{corpus.name}); use kjv, shakespeare or text:PATH")
        v = corpus.vocab_size
        p = SHIFT_MIX * syn.transition_matrix(v) + (1 - SHIFT_MIX) * syn.transition_matrix(
            v, syn.SYNTHETIC_SEED + SHIFT_SEED_OFFSET)
        rng = np.random.default_rng([syn.SYNTHETIC_SEED, v, 99])
        rows = syn.sample_chains(p, n_batches * batch_size, seq_len + 1, rng)
        return [rows[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
    if corpus.name == "synthetic":
        raise DataError(f"--ood {source}: a run trained on the synthetic source has no text tokenizer; "
                        f"use --ood {SYNTHETIC_SHIFT}")
    if source == "synthetic":
        raise DataError("--ood synthetic: a text-trained run cannot read synthetic symbols; use kjv, "
                        "shakespeare or text:PATH")
    if source == corpus.name:
        raise DataError(f"--ood {source}: the run was trained on {source}; choose another corpus")
    root = pathlib.Path(corpus.folder).parent.parent if corpus.folder else None
    if root is None:
        raise DataError("OOD: the run's corpus has no cache folder; prepare it with `ebt-scale data prepare`")
    docs, _, _ = load_documents(source, root, lambda m: None)
    return _encode_ood(docs, corpus.tokenizer, source, spec, n_batches, batch_size, seq_len)


def store_ood_batches(source: str, spec: RunSpec, n_batches: int, batch_size: int, seq_len: int) -> list[np.ndarray]:
    """Batches of an OOD corpus for a run trained on a token store, encoded with the store's own tokenizer (the
    ``tokenizer.json`` its manifest names: ``store.store_tokenizer``)."""
    from ebt_scaling.data.cache import cache_root
    from ebt_scaling.data.sampler import store_path
    from ebt_scaling.data.store import store_tokenizer

    if source in ("synthetic", SYNTHETIC_SHIFT):
        raise DataError(f"--ood {source}: a run trained on a token store reads text; use --ood text:PATH, kjv or "
                        "shakespeare")
    tok = store_tokenizer(store_path(spec.data.source))
    docs, _, _ = load_documents(source, cache_root(spec.data.cache_dir), lambda m: None)
    return _encode_ood(docs, tok, source, spec, n_batches, batch_size, seq_len)


def _encode_ood(docs: Sequence[str], tok, source: str, spec: RunSpec, n_batches: int,  # noqa: ANN001
                batch_size: int, seq_len: int) -> list[np.ndarray]:
    """Evenly spread pieces of ``docs``, encoded with ``tok``, as windows of the run's token space."""
    text = "\n".join(docs)
    n_pieces = -(-len(text) // _OOD_PIECE_CHARS)
    pick = sorted({int(i) for i in np.linspace(0, n_pieces - 1, min(_OOD_PIECES, n_pieces)).round()})
    pieces = [text[i * _OOD_PIECE_CHARS:(i + 1) * _OOD_PIECE_CHARS] for i in pick]
    ids = tok.encode_batch(pieces) if hasattr(tok, "encode_batch") else [tok.encode(p) for p in pieces]
    stream = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids])
    if stream.size and int(stream.max()) >= spec.model.vocab_size:
        raise DataError(f"--ood {source}: token ids exceed the model's vocabulary; the tokenizer does not match")
    return _windows(stream, n_batches, batch_size, seq_len)


def video_ood_batches(source: str, data: VideoData, spec: RunSpec, n_batches: int, batch_size: int,
                      seq_len: int) -> list[np.ndarray]:
    """OOD windows (B, T+1, E) for a video run, standardised with the run's own store statistics (the model's input
    space): ``synthetic-video-shift`` (the synthetic clips with seed + 1 and ``VIDEO_SHIFT_SPEED`` x the motion,
    through the run's store's encoder, float16 as stored) or ``store:DIR`` (a video store of the same frame_dim:
    windows evenly spread over all its clips)."""
    from ebt_scaling.data.video import DTYPE, VideoStore, patch_encoder, synthetic_clip
    from ebt_scaling.data.video_data import SYNTHETIC_VIDEO_SEED

    n = n_batches * batch_size
    if source == VIDEO_SHIFT:
        p = data.store.manifest["params"]
        if p.get("source") != "synthetic" or p.get("encoder") != "patch":
            raise DataError(f"--ood {VIDEO_SHIFT}: only for runs trained on synthetic video (this run: "
                            f"{spec.data.source}); pass --ood store:DIR, a video store of frame_dim {data.frame_dim}")
        encode = patch_encoder(data.frame_dim, p["grid"])
        raw = np.stack([encode(synthetic_clip(SYNTHETIC_VIDEO_SEED + VIDEO_SHIFT_SEED_OFFSET, i, seq_len + 1,
                                              p["size"], speed=VIDEO_SHIFT_SPEED)) for i in range(n)])
        rows = raw.astype(DTYPE).astype(np.float32)
    elif source.startswith("store:"):
        folder = pathlib.Path(source[6:]).expanduser()
        if folder.resolve() == data.store.out.resolve():
            raise DataError(f"--ood {source}: the run was trained on this store; choose another video store")
        store = VideoStore(folder, cache_dir=spec.data.cache_dir)
        if store.frame_dim != data.frame_dim:
            raise DataError(f"--ood {source}: frame_dim {store.frame_dim} differs from the run's {data.frame_dim}; "
                            f"prepare the OOD store with --frame-dim {data.frame_dim}")
        if store.clip_frames < seq_len + 1:
            raise DataError(f"--ood {source}: clips of {store.clip_frames} frames are shorter than the run's "
                            f"{seq_len + 1}-frame windows; prepare it with --clip-frames {seq_len + 1}")
        clips = store.all()
        w = store.clip_frames - seq_len
        pos = np.linspace(0, len(clips) * w - 1, n).round().astype(np.int64)
        rows = np.stack([clips[c, o:o + seq_len + 1] for c, o in zip(pos // w, pos % w, strict=True)])
    else:
        raise DataError(f"--ood {source}: a video run reads frame embeddings; use --ood {VIDEO_SHIFT} (synthetic-video "
                        f"runs) or store:DIR (a video store of frame_dim {data.frame_dim})")
    rows = ((rows - data.mean) / data.std).astype(np.float32)
    return [rows[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


# ------------------------------------------------------------------------------------------ evaluation
@dataclass
class SplitResult:
    """Perplexity (text) or SmoothL1 (video: ``loss``, ``measure`` "smooth_l1") per (steps, samples) of one split,
    plus energies of sample 0 per step count."""

    ppl: dict[tuple[int, int], float]
    energy_steps: list[float] = field(default_factory=list)  # mean energy after k = 0..K steps (sample 0)
    token_energy: list[list[float]] = field(default_factory=list)  # [k][position] for the sample sentence / clip
    token_target: list[int] = field(default_factory=list)
    tokens: int = 0  # predicted units: tokens, or frames for video
    loss: dict[tuple[int, int], float] = field(default_factory=dict)  # video: SmoothL1 per (steps, samples)
    measure: str = "ppl"  # what ``values`` holds: "ppl" or "smooth_l1" (train/modality.py's think_measure)
    baselines: dict[str, float] = field(default_factory=dict)  # video: copy_loss, mean_loss on the same windows

    @property
    def values(self) -> dict[tuple[int, int], float]:
        """The reported measure per (steps, samples): lower is better in both modalities."""
        return self.ppl if self.measure == "ppl" else self.loss


_ce = TEXT.unit_losses  # per-token cross-entropy (B, T) in nats


def evaluate_split(model: torch.nn.Module, batches: Sequence[np.ndarray], steps: Sequence[int],
                   samples: Sequence[int], *, seed: int, device: torch.device,
                   on_batch: Callable[[int], None] | None = None) -> SplitResult:
    """Perplexity for every (k in steps, N in samples) on ``batches`` (each (B, T+1) int64); for a video model
    SmoothL1 on frame windows (B, T+1, E) (``_evaluate_frames``)."""
    mod = modality_of(model.cfg)
    if mod.name == "video":
        return _evaluate_frames(model, batches, steps, samples, seed=seed, device=device, on_batch=on_batch)
    steps, samples = sorted(set(steps)), sorted(set(samples))
    is_ebt = model.cfg.family == "ebt"
    sums = {(k, n): 0.0 for k in steps for n in samples}
    n_tok = 0
    kmax, nmax = steps[-1], samples[-1]
    step_set = set(steps)
    e_sums = [0.0] * (kmax + 1)
    token_energy: list[list[float]] = []
    token_target: list[int] = []
    for b, arr in enumerate(batches):
        batch = torch.from_numpy(np.asarray(arr)).to(device)
        # Document rows end in PAD (-100): those targets drop out of every sum (the cross-entropy ignores them, the
        # energies are masked) and their inputs, after every real position, are clamped to token 0 as in training.
        idx, tgt = batch[:, :-1].clamp(min=0), batch[:, 1:]
        real = tgt != PAD
        n_tok += int(real.sum())
        if not is_ebt:
            with torch.no_grad():
                ce = float(_ce(model(idx), tgt).sum())
            for key in sums:  # one pass whatever the budget: the flat baseline
                sums[key] += ce
            if on_batch:
                on_batch(b)
            continue
        m = model.cfg.mcmc_num_steps
        landscapes = [min(j, m - 1) for j in range(kmax)]
        alpha = model.alpha_value().detach()
        sigma = float(model.cfg.langevin_noise_std)
        best_e: dict[int, torch.Tensor] = {}
        best_ce: dict[int, torch.Tensor] = {}
        for s in range(nmax):
            g = torch.Generator(device=device).manual_seed(sample_seed(seed, b, s))
            z0 = model._noise((idx.shape[0], idx.shape[1], model.cfg.vocab_size), idx.device, g) \
                * model.cfg.init_noise_scale
            zs, _ = model.descend(idx, z0, landscapes, alpha=alpha, sigma=sigma, need_graph=False, generator=g)
            ks = range(1, kmax + 1) if s == 0 else steps  # sample 0: every k, for the energy curve
            with torch.no_grad():
                energies_k: dict[int, torch.Tensor] = {}
                if s == 0:
                    e0 = model.energies(idx, z0.softmax(-1), landscapes[0])
                    e_sums[0] += float(e0[real].sum())
                    energies_k[0] = e0
                for k in ks:
                    z = zs[k - 1]
                    e = model.energies(idx, z.softmax(-1), landscapes[k - 1])  # the scoring pass
                    if s == 0:
                        e_sums[k] += float(e[real].sum())
                        energies_k[k] = e
                    if k not in step_set:
                        continue
                    ce = _ce(z, tgt)
                    if s == 0:
                        best_e[k], best_ce[k] = e, ce
                    else:
                        better = e < best_e[k]
                        best_e[k] = torch.where(better, e, best_e[k])
                        best_ce[k] = torch.where(better, ce, best_ce[k])
                    if s + 1 in samples:
                        sums[(k, s + 1)] += float(best_ce[k].sum())
            if s == 0 and b == 0:
                n = min(SENTENCE_TOKENS, int(real[0].sum()))
                token_energy = [[float(x) for x in energies_k[k][0, :n]] for k in range(kmax + 1)]
                token_target = [int(x) for x in tgt[0, :n]]
        if on_batch:
            on_batch(b)
    ppl = {key: (math.exp(v / n_tok) if v / n_tok < 700 else math.inf) for key, v in sums.items()}
    energy_steps = [v / n_tok for v in e_sums] if is_ebt else []
    return SplitResult(ppl, energy_steps, token_energy, token_target, n_tok)


def _evaluate_frames(model: torch.nn.Module, batches: Sequence[np.ndarray], steps: Sequence[int],
                     samples: Sequence[int], *, seed: int, device: torch.device,
                     on_batch: Callable[[int], None] | None = None) -> SplitResult:
    """Video: frame-mean SmoothL1 for every (k, N) (``VideoEBT.think_grid`` with sample s of batch b drawing from its
    own generator, seeded ``sample_seed(seed, b, s)``), sample 0's mean energy after k = 0..max steps, the energies
    of batch 0's first clip per predicted frame, and the copy / mean baselines on the same windows."""
    mod = VIDEO
    steps, samples = sorted(set(steps)), sorted(set(samples))
    is_ebt = model.cfg.family == "ebt"
    sums = {(k, n): 0.0 for k in steps for n in samples}
    base = {"copy_loss": 0.0, "mean_loss": 0.0}
    e_sums = [0.0] * (steps[-1] + 1)
    n_frames = 0
    clip_energy: list[list[float]] = []
    for b, arr in enumerate(batches):
        frames, tgt = inputs_targets(torch.from_numpy(np.asarray(arr, dtype=np.float32)).to(device))
        n_frames += target_count(tgt)
        base["copy_loss"] += float(mod.unit_losses(frames, tgt).sum())
        base["mean_loss"] += float(mod.unit_losses(torch.zeros_like(tgt), tgt).sum())
        if not is_ebt:
            with torch.no_grad():
                loss = float(mod.unit_losses(model(frames), tgt).sum())
            for key in sums:  # one pass whatever the budget: the flat baseline
                sums[key] += loss
        else:
            gens = [torch.Generator(device=device).manual_seed(sample_seed(seed, b, s)) for s in range(samples[-1])]
            grid = model.think_grid(frames, steps, samples, gens)
            for key, y in grid.y.items():
                sums[key] += float(mod.unit_losses(y, tgt).sum())
            for k, e in enumerate(grid.energy_steps):
                e_sums[k] += float(e.sum())
            if b == 0:
                clip_energy = [[float(x) for x in e[0]] for e in grid.energy_steps]
        if on_batch:
            on_batch(b)
    loss = {key: mod.from_mean_loss(v / n_frames) for key, v in sums.items()}
    return SplitResult({}, [v / n_frames for v in e_sums] if is_ebt else [], clip_energy, [], n_frames, loss=loss,
                       measure=mod.think_measure, baselines={k: v / n_frames for k, v in base.items()})


@dataclass
class RunThinking:
    """Everything measured for one run."""

    family: str
    base_steps: int
    val: SplitResult
    ood: SplitResult | None
    ood_source: str | None
    messages: list[str] = field(default_factory=list)


def think_run(spec: RunSpec, checkpoint: str, *, steps: Sequence[int], samples: Sequence[int],
              ood: str | None, n_batches: int, batch_size: int | None = None, seed: int = 0,
              device: str = "cpu", on_batch: Callable[[str, int], None] | None = None) -> RunThinking:
    """Evaluate one trained run on its validation split and (when ``ood``) an OOD corpus.

    ``ood``: a source name, ``"auto"`` (``default_ood``) or None (skip). The step grid always includes the
    run's trained validation step count (the baseline setting)."""
    if spec.model.modality == "text" and ood is not None and (ood == VIDEO_SHIFT or ood.startswith("store:")):
        raise DataError(f"--ood {ood}: video OOD sets are for video runs; a text run takes kjv, shakespeare, "
                        "synthetic-shift or text:PATH")
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_run_model(spec, checkpoint, dev)
    T = spec.model.sequence_len
    B = batch_size or spec.train.batch_size
    if spec.model.modality == "video":
        return _think_video_run(model, spec, steps=steps, samples=samples, ood=ood, n_batches=n_batches,
                                batch_size=B, seed=seed, device=dev, on_batch=on_batch)
    store_run = spec.data.source.startswith("store:")
    # Validation rows: a built-in source in packed mode keeps the corpus's own validation windows (as before token
    # stores existed); a token store or document sampling takes the run's validation split from its sampler
    # (document rows padded with PAD, handled by evaluate_split).
    corpus = None if store_run else load_corpus(spec.data, T, progress=lambda m: None)
    if corpus is not None and spec.data.sampling == "packed":
        val_b = corpus.val_batches(n_batches, B, T)
    else:
        val_b = open_data(spec.data, T, seed=spec.train.seed, progress=lambda m: None).val_batches(n_batches, B, T)
    base = spec.model.eval_steps if spec.model.family == "ebt" else 1
    grid = sorted(set(steps) | {base})
    msgs: list[str] = []
    val = evaluate_split(model, val_b, grid, samples, seed=seed, device=dev,
                         on_batch=(lambda b: on_batch("val", b)) if on_batch else None)
    if store_run:
        src = None if ood == "auto" else ood
    else:
        src = default_ood(spec.data.source) if ood == "auto" else ood
    ood_res = None
    if ood == "auto" and store_run:
        msgs.append(NO_STORE_OOD)
    elif ood == "auto" and src is None:
        msgs.append(f"no OOD corpus for a run trained on {spec.data.source} (the `bible` program is not "
                    "installed: `apt-get install bible-kjv`, or pass --ood text:PATH)")
    if src is not None:
        if corpus is None:
            ob = store_ood_batches(src, spec, n_batches, B, T)
        else:
            ob = ood_batches(src, corpus, spec, n_batches, B, T)
        ood_res = evaluate_split(model, ob, grid, samples, seed=seed, device=dev,
                                 on_batch=(lambda b: on_batch("ood", b)) if on_batch else None)
    return RunThinking(spec.model.family, base, val, ood_res, ood_label(src) if src else None, msgs)


def _think_video_run(model: torch.nn.Module, spec: RunSpec, *, steps: Sequence[int], samples: Sequence[int],
                     ood: str | None, n_batches: int, batch_size: int, seed: int, device: torch.device,
                     on_batch: Callable[[str, int], None] | None) -> RunThinking:
    """``think_run`` of a video run: its VideoData's fixed validation windows (``val_batches``: the same validation
    clips as training, ``n_batches`` x ``batch_size`` windows spread evenly over them) and, with ``ood``, an OOD set
    (``video_ood_batches``; ``auto``: ``synthetic-video-shift`` for a synthetic-video run, none for a store run)."""
    from ebt_scaling.config import is_synthetic_video

    T = spec.model.sequence_len
    data = open_data(spec.data, T, seed=spec.train.seed, progress=lambda m: None, frame_dim=spec.model.frame_dim)
    val_b = data.val_batches(n_batches, batch_size, T)
    base = spec.model.eval_steps if spec.model.family == "ebt" else 1
    grid = sorted(set(steps) | {base})
    msgs: list[str] = []
    val = evaluate_split(model, val_b, grid, samples, seed=seed, device=device,
                         on_batch=(lambda b: on_batch("val", b)) if on_batch else None)
    src = ood
    if ood == "auto":
        src = VIDEO_SHIFT if is_synthetic_video(spec.data.source) else None
        if src is None:
            msgs.append(NO_VIDEO_STORE_OOD)
    ood_res = None
    if src is not None:
        ob = video_ood_batches(src, data, spec, n_batches, batch_size, T)
        ood_res = evaluate_split(model, ob, grid, samples, seed=seed, device=device,
                                 on_batch=(lambda b: on_batch("ood", b)) if on_batch else None)
    return RunThinking(spec.model.family, base, val, ood_res, ood_label(src) if src else None, msgs)
