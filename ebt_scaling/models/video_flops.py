"""Parameters and FLOPs per frame of the video models (``models/video.py``), in ``flops.py``'s conventions
(pure Python: no torch import).

Symbols as in ``flops.py``, with E the frame-embedding size in place of the vocabulary V and T context frames.

``paper``: the text convention unchanged (6N per frame for the T++ in training, 2N in evaluation; the EBT's 20N
    per graph step, 8N per first-order step); N = non-embedding parameters (blocks + final norm). The paper
    plots video against width and parameters only, so this is the text convention carried over.
``exact`` (matmul level, the way ``video.py`` runs):
    T++: the text count with V -> E (the head D -> E), plus the frame projection E -> D, whose forward costs
      2*T*E*D and whose backward only a weight gradient (the frames are data): train 3*Ft - 2*T*E*D.
    EBT: the text count with V -> E (candidates are projected by ``frame_to_embed`` as text candidates by
      ``vocab_to_embed``; the explicit dE/dy = (dE/dh) W is the text's dE/dp), plus the observed frames'
      projection 2*T*E*D per observed pass (one per landscape with the step token, else one), doubled (its weight
      gradient) when a graph step uses that pass. ``tests/test_video_models.py`` checks it against the matmul
      counter.
"""

from __future__ import annotations

from typing import Any

from ebt_scaling.models import flops


class _FramesAsVocab:
    """``cfg`` read with ``vocab_size`` = the frame-embedding size (the text formulas' V is the video's E)."""

    def __init__(self, cfg: Any, frame_dim: int) -> None:
        self._cfg = cfg
        self.vocab_size = frame_dim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)


def video_param_counts(cfg: Any, frame_dim: int) -> dict[str, int]:
    """By group; ``total`` equals ``sum(p.numel() for p in build_video_model(cfg, frame_dim).parameters())``."""
    text = flops.param_counts(cfg)
    d = cfg.n_embd
    counts = {"frame_projection": frame_dim * d + d, "non_embedding": text["non_embedding"],
              "output_head": frame_dim * d if cfg.family == "transformer_pp" else 0,
              "energy_head": text["energy_head"], "step_embedding": text["step_embedding"], "alpha": text["alpha"]}
    counts["total"] = sum(counts.values())
    return counts


def _observed_projection(cfg: Any, frame_dim: int, t: int, landscapes: list[int], graph: list[bool]) -> float:
    one = 2.0 * t * frame_dim * cfg.n_embd
    if not cfg.step_embedding:
        return one * (2 if any(graph) else 1)
    graph_ls = {ls for ls, g in zip(landscapes, graph, strict=True) if g}
    return sum(one * (2 if ls in graph_ls else 1) for ls in set(landscapes))


def video_flops_per_frame(cfg: Any, frame_dim: int, convention: str, *, mode: str = "train",
                          steps: int | None = None, seq_len: int | None = None) -> float:
    """FLOPs per predicted frame in ``mode`` ``train`` (forward + backward of one training forward) or ``eval``
    (one validation forward: the EBT's descent). ``steps``: the EBT's inner-step count (default: the configured
    one; a randomised count is averaged)."""
    from ebt_scaling.errors import ConfigError

    if mode not in ("train", "eval"):
        raise ConfigError(f"mode: video FLOPs are counted for 'train' or 'eval', got {mode!r}")
    if convention == "paper":
        return flops.flops_per_token(cfg, "paper", mode=mode, steps=steps)
    if convention != "exact":
        raise ConfigError(f"convention: unknown FLOPs convention {convention!r}; use paper or exact")
    t = seq_len if seq_len is not None else cfg.sequence_len
    shim = _FramesAsVocab(cfg, frame_dim)
    proj = 2.0 * t * frame_dim * cfg.n_embd
    if cfg.family == "transformer_pp":
        fwd = flops._exact_terms(shim, t)["fwd"] + proj
        return (3 * fwd - proj if mode == "train" else fwd) / t
    terms = flops._exact_terms(shim, t)
    if mode == "train":
        if steps is None and cfg.randomize_num_steps:
            lo = max(cfg.randomize_num_steps_min, 1)
            counts = [cfg.mcmc_num_steps - 1 + r for r in range(lo, cfg.randomize_num_steps + 2)]
        else:
            counts = [int(steps) if steps is not None else cfg.mcmc_num_steps]
        total = 0.0
        for n in counts:
            graph = [(not cfg.truncate_steps) or i == n - 1 for i in range(n)]
            total += flops._ebt_train_seq(shim, terms, n, t, True)
            total += _observed_projection(cfg, frame_dim, t, flops._descent_landscapes(cfg, n), graph)
        return total / len(counts) / t
    n = int(steps) if steps is not None else cfg.eval_steps
    per_seq = flops._ebt_nograd_seq(shim, terms, float(n), 1, False, True)
    per_seq += _observed_projection(cfg, frame_dim, t, flops._descent_landscapes(cfg, n), [False] * n)
    return per_seq / t
