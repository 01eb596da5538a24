"""Parameter groups and FLOPs per token under named conventions (pure Python: no torch import).

Used by sweep planning and the training loop. Every figure here is a function of a ``ModelConfig``.

Symbols: L blocks, D width, F SwiGLU hidden width (cfg.ffn_dim), V vocabulary, T predicted positions per
sequence (cfg.sequence_len unless ``seq_len`` is given), M landscapes (cfg.mcmc_num_steps),
s = 1 with the step embedding (the step token is an extra observed row) else 0, So = T + s observed rows,
N = non-embedding parameters (blocks + final norm).

Conventions
-----------
``paper`` (ebt-paper.md section 17.1; what the paper plots):
    T++ training 6N per token, evaluation 2N.
    EBT: a step whose graph the outer loss backpropagates ("graph step") costs 20N per token
    (forward 2N + backward 4N + Hessian-vector backward 4N, times 2 for the doubled sequence); S1 with
    2 steps is therefore 40N = 6.66x T++. The paper gives no figure for S2 ("varies"); we extend its own
    per-pass weights: a first-order step (forward + input gradient, no outer backward: truncated early
    steps, validation, thinking) costs (2N + 2N) x 2 = 8N, a scoring forward 4N, and the replay buffer
    multiplies training cost by (1 + replay_buffer_fraction) per fresh training token.
``exact`` (matmul level, 2*M*N*K per matrix product, counted the way our implementation runs):
    T++ forward per sequence  Ft = L*(2*T*W + 4*T^2*D) + 2*T*D*V    with W = 4*D^2 + 3*D*F
      (full T x T attention scores, no causal discount; the output head D->V).
      Training = 3 * Ft (every matmul has input and weight gradients), evaluation = Ft.
    EBT, one energy evaluation = observed stream O + prediction stream P, per sequence:
      O = (L-1)*(2*So*W + 4*So^2*D) + 4*So*D^2   (the last block only needs the observed keys/values)
      P = L*(2*T*W + 4*T*So*D) + 2*T*V*D + 2*T*D  (prediction rows, vocab_to_embed V->D, energy head)
      first-order step (no outer backward): O + 2P   (forward + input gradient of the prediction stream,
        which needs no weight gradients and no observed-stream gradients)
      graph step: 3*O + 6*P - 6*T*D - 2*T*V*D*[p needs no gradient]   (forward, inner gradient, outer
        backward of the forward graph (2x) and of the inner-gradient graph (2x, reverse-over-reverse); the
        energy head's value never reaches the loss, only its weight does; the inner gradient is taken
        w.r.t. the embedded rows and projected by W_v2e explicitly, so the candidate p itself needs a
        gradient only when the chain of steps is kept: no detach, after a graph step or with a learnable
        alpha)
      scoring forward (best-of-N): O + P.
    With observed-stream reuse (``reuse_observed=True``, the model's default) O is paid once per landscape
    per descent instead of per step (3*O if any graph step uses it; shared by all best-of-N samples and
    scoring passes). The per-step figures above minus O remain.
    Detaching between steps does not change FLOPs. Softmax, norms and other elementwise work are not
    counted. ``tests/test_flops.py`` checks this against a dispatch-mode matmul counter.

Step counts: ``steps=None`` means the configured count: training averages over the step-count
distribution (M - 1 + r, r ~ U{max(min, 1)..k+1} when randomised), evaluation uses ``cfg.eval_steps``;
a fractional ``steps`` interpolates linearly. With truncation
only the last step is a graph step; without it every training step is.
"""

from __future__ import annotations

from typing import Any

CONVENTIONS = ("paper", "exact")
MODES = ("train", "eval", "think")


def param_counts(cfg: Any) -> dict[str, int]:
    """Parameter counts by group; ``total`` equals ``sum(p.numel() for p in build_model(cfg).parameters())``."""
    d, n_layer, v = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    f = cfg.ffn_dim
    per_block = 4 * d * d + 3 * d * f + 2 * d  # wq wk wv wo, SwiGLU, two RMSNorm weights
    counts = {
        "embedding": v * d,
        "non_embedding": n_layer * per_block + d,  # + final RMSNorm
        "vocab_projection": v * d,  # T++ output head D->V, EBT vocab_to_embed V->D
        "energy_head": 0,
        "step_embedding": 0,
        "alpha": 0,
    }
    if cfg.family == "ebt":
        counts["energy_head"] = d
        counts["step_embedding"] = cfg.mcmc_num_steps * d if cfg.step_embedding else 0
        counts["alpha"] = 1 if cfg.step_size_learnable else 0
    counts["total"] = sum(counts.values())
    return counts


def expected_train_steps(cfg: Any) -> float:
    """Expected inner steps of one EBT training forward (step-count randomisation on the last landscape)."""
    k = cfg.randomize_num_steps
    if not k:
        return float(cfg.mcmc_num_steps)
    lo = max(cfg.randomize_num_steps_min, 1)
    return cfg.mcmc_num_steps - 1 + (lo + k + 1) / 2.0


def _check(cfg: Any, convention: str, mode: str, steps: float | None, samples: int) -> None:
    from ebt_scaling.errors import ConfigError

    if convention not in CONVENTIONS:
        raise ConfigError(f"convention: unknown FLOPs convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
    if mode not in MODES:
        raise ConfigError(f"mode: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if steps is not None and not steps >= 1:
        raise ConfigError(f"steps: must be >= 1, got {steps!r}; pass None for the configured count")
    if samples < 1:
        raise ConfigError(f"samples: must be >= 1, got {samples!r}")
    if cfg.family == "transformer_pp" and mode == "think":
        raise ConfigError("mode: 'think' applies to the EBT only; use mode='eval' for the Transformer++")


def _exact_terms(cfg: Any, t: int) -> dict[str, float]:
    d, n_layer, v, f = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.ffn_dim
    w = 4 * d * d + 3 * d * f
    if cfg.family == "transformer_pp":
        return {"fwd": n_layer * (2 * t * w + 4 * t * t * d) + 2 * t * d * v}
    so = t + (1 if cfg.step_embedding else 0)

    def observed(rows: int) -> float:
        return (n_layer - 1) * (2 * rows * w + 4 * rows * rows * d) + 4 * rows * d * d

    obs = observed(so)
    pred = n_layer * (2 * t * w + 4 * t * so * d) + 2 * t * v * d + 2 * t * d
    return {"O": obs, "P": pred, "first_order": obs + 2 * pred, "graph": 3 * obs + 6 * pred - 6 * t * d,
            "score": obs + pred}


def flops_per_token(cfg: Any, convention: str, *, mode: str = "train", steps: float | None = None,
                    samples: int = 1, seq_len: int | None = None, reuse_observed: bool = True) -> float:
    """FLOPs per token for one of ``CONVENTIONS`` in ``mode`` (``train``: per training token of an optimizer
    step, ``eval``: one validation forward, ``think``: EBT best-of-``samples`` with ``steps`` inner steps
    plus one scoring forward per sample). ``steps`` overrides the configured inner-step count (EBT).
    ``reuse_observed`` (``exact`` only): the EBT computes the observed stream once per landscape and shares it
    (``EBT.reuse_observed``, the default); False counts the reference path that recomputes it every step."""
    _check(cfg, convention, mode, steps, samples)
    t = seq_len if seq_len is not None else cfg.sequence_len
    ebt = cfg.family == "ebt"
    replay = (1.0 + cfg.replay_buffer_fraction) if (ebt and mode == "train" and cfg.replay_buffer_size) else 1.0
    steps_given = steps
    if steps is None:
        steps = expected_train_steps(cfg) if mode == "train" else cfg.eval_steps
    if mode == "train":
        graph_steps = 1.0 if cfg.truncate_steps else float(steps)
        first_order_steps = float(steps) - graph_steps
    else:
        graph_steps, first_order_steps = 0.0, float(steps)

    if convention == "paper":
        n = param_counts(cfg)["non_embedding"]
        if not ebt:
            return float(6 * n if mode == "train" else 2 * n)
        per_seq_tok = 20 * n * graph_steps + 8 * n * first_order_steps
        if mode == "think":
            return float(samples * (per_seq_tok + 4 * n))
        return float(per_seq_tok * replay)

    terms = _exact_terms(cfg, t)
    if not ebt:
        return float((3 if mode == "train" else 1) * terms["fwd"] / t)
    if mode == "train":
        if steps_given is None and cfg.randomize_num_steps:
            lo = max(cfg.randomize_num_steps_min, 1)
            counts = [cfg.mcmc_num_steps - 1 + r for r in range(lo, cfg.randomize_num_steps + 2)]
            per_seq = sum(_ebt_train_seq(cfg, terms, n, t, reuse_observed) for n in counts) / len(counts)
        else:
            lo_n = int(steps)
            frac = float(steps) - lo_n
            per_seq = _ebt_train_seq(cfg, terms, lo_n, t, reuse_observed)
            if frac:
                per_seq += frac * (_ebt_train_seq(cfg, terms, lo_n + 1, t, reuse_observed) - per_seq)
        return float(per_seq * replay / t)
    per_seq = _ebt_nograd_seq(cfg, terms, float(steps), samples if mode == "think" else 1, mode == "think",
                              reuse_observed)
    return float(per_seq / t)


def _observed_cost(cfg: Any, terms: dict[str, float], landscapes: list[int], graph: list[bool],
                   reuse: bool) -> float:
    """Observed-stream FLOPs of one descent: per step (reference path) or once per landscape (reuse).

    A stream that some graph step uses costs 3x (forward, then the outer backward's input and weight
    gradients; every step's gradient is accumulated into the shared keys/values first)."""
    if not reuse:
        return sum(terms["O"] * (3 if g else 1) for g in graph)
    graph_ls = {ls for ls, g in zip(landscapes, graph, strict=True) if g}
    if not cfg.step_embedding:
        return terms["O"] * (3 if graph_ls else 1)
    return sum(terms["O"] * (3 if ls in graph_ls else 1) for ls in set(landscapes))


def _descent_landscapes(cfg: Any, n: int) -> list[int]:
    return [min(j, cfg.mcmc_num_steps - 1) for j in range(n)]


def _ebt_train_seq(cfg: Any, terms: dict[str, float], n: int, t: int, reuse: bool = True) -> float:
    """Exact matmul FLOPs of one EBT training forward + backward with n inner steps, per sequence.

    A graph step saves the 2*T*V*D input gradient of ``vocab_to_embed`` when its candidate p needs no
    gradient (the step's candidate does not carry the chain of earlier steps).
    """
    total = 0.0
    chain = False  # does this step's candidate carry a gradient path from earlier steps?
    prev_graph = False
    alpha_grad = bool(cfg.step_size_learnable)
    graphs = []
    for i in range(n):
        graph = (not cfg.truncate_steps) or i == n - 1
        if i > 0 and not cfg.detach_between_steps:
            chain = chain or alpha_grad or prev_graph
        else:
            chain = False
        if graph:
            saved = 0 if chain else 2 * t * cfg.vocab_size * cfg.n_embd
            total += terms["graph"] - 3 * terms["O"] - saved
        else:
            total += terms["first_order"] - terms["O"]
        prev_graph = graph
        graphs.append(graph)
    return total + _observed_cost(cfg, terms, _descent_landscapes(cfg, n), graphs, reuse)


def _ebt_nograd_seq(cfg: Any, terms: dict[str, float], steps: float, samples: int, score: bool,
                    reuse: bool) -> float:
    """Validation (``score=False``, one sample) or thinking: first-order steps, plus a scoring forward per
    sample. With reuse the observed streams are shared by all samples and the scoring passes."""
    per_seq_p = 2 * terms["P"] * steps + (terms["P"] if score else 0.0)
    if not reuse:
        return samples * (per_seq_p + terms["O"] * (steps + (1 if score else 0)))
    n = int(steps)
    obs = _observed_cost(cfg, terms, _descent_landscapes(cfg, n), [False] * n, True)
    if steps != n:  # fractional step counts interpolate
        nxt = _observed_cost(cfg, terms, _descent_landscapes(cfg, n + 1), [False] * (n + 1), True)
        obs += (steps - n) * (nxt - obs)
    return samples * per_seq_p + obs


def flops_ratio(cfg_ebt: Any, cfg_tpp: Any, convention: str = "exact", mode: str = "train") -> float:
    """EBT / T++ FLOPs per token."""
    return flops_per_token(cfg_ebt, convention, mode=mode) / flops_per_token(cfg_tpp, convention, mode=mode)
