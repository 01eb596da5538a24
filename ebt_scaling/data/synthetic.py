"""A seeded first-order Markov source over ``vocab_size`` symbols with a known entropy rate.

Each row of the transition matrix is ``(1 - floor) * Dirichlet(concentration) + floor / V``: sparse enough
that a model which learns the transitions ends far below the unigram entropy, and strictly positive so that
the chain is irreducible and aperiodic (a unique stationary distribution exists).

The entropy rate of a stationary Markov chain is ``H = -sum_i pi_i sum_j P_ij log P_ij`` (nats/token), the
lowest cross-entropy any model can reach on this source; ``H(pi)`` is what a unigram model reaches.
The synthetic corpus is ``SYNTHETIC_CHAINS`` independent chains of ``SYNTHETIC_CHAIN_LEN`` tokens, each
started from the stationary distribution, so every token is distributed as the stationary process.
"""

from __future__ import annotations

import functools

import numpy as np

from ebt_scaling.errors import ConfigError

SYNTHETIC_SEED = 20250707  # fixed: the synthetic source is one well-defined process per vocab size
SYNTHETIC_CONCENTRATION = 0.05
SYNTHETIC_FLOOR = 1e-3
SYNTHETIC_CHAIN_LEN = 4096
SYNTHETIC_CHAINS = 256  # 1,048,576 tokens
SYNTHETIC_MAX_VOCAB = 4096


def _check_vocab(vocab_size: int) -> None:
    if not 2 <= vocab_size <= SYNTHETIC_MAX_VOCAB:
        raise ConfigError(f"DataConfig.vocab_size: the synthetic source supports 2..{SYNTHETIC_MAX_VOCAB} "
                          f"symbols, got {vocab_size}; use e.g. --vocab-size 64")


@functools.lru_cache(maxsize=8)
def transition_matrix(vocab_size: int, seed: int = SYNTHETIC_SEED) -> np.ndarray:
    """The (V, V) row-stochastic transition matrix of the synthetic source (read-only)."""
    _check_vocab(vocab_size)
    rng = np.random.default_rng([seed, vocab_size])
    d = rng.dirichlet(np.full(vocab_size, SYNTHETIC_CONCENTRATION), size=vocab_size)
    d = np.nan_to_num(d, nan=1.0 / vocab_size)
    p = (1.0 - SYNTHETIC_FLOOR) * d + SYNTHETIC_FLOOR / vocab_size
    p /= p.sum(axis=1, keepdims=True)
    p.setflags(write=False)
    return p


def stationary_distribution(p: np.ndarray, tol: float = 1e-14, max_iter: int = 100_000) -> np.ndarray:
    """pi with pi P = pi, by power iteration (converges: every entry of P is positive)."""
    v = p.shape[0]
    pi = np.full(v, 1.0 / v)
    for _ in range(max_iter):
        nxt = pi @ p
        nxt /= nxt.sum()
        if np.abs(nxt - pi).sum() < tol:
            return nxt
        pi = nxt
    return pi


def entropy_rate(p: np.ndarray) -> float:
    """Entropy rate (nats/token) of the stationary Markov chain with transition matrix ``p``."""
    pi = stationary_distribution(p)
    row_h = -(p * np.log(p)).sum(axis=1)
    return float(pi @ row_h)


def synthetic_entropy_rate(vocab_size: int) -> float:
    """The analytic entropy rate (nats/token) of the ``synthetic`` source with this vocabulary."""
    return entropy_rate(transition_matrix(vocab_size))


def synthetic_unigram_entropy(vocab_size: int) -> float:
    """Entropy (nats) of the stationary distribution: the best a unigram model can do on this source."""
    pi = stationary_distribution(transition_matrix(vocab_size))
    return float(-(pi * np.log(pi)).sum())


def sample_chains(p: np.ndarray, n_chains: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Sample ``n_chains`` independent stationary chains of ``length`` tokens: (n_chains, length) int64."""
    v = p.shape[0]
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0
    # Row s of the flattened table covers [s, s + 1]: one searchsorted draws every chain's next state.
    flat = (cum + np.arange(v)[:, None]).ravel()
    out = np.empty((n_chains, length), dtype=np.int64)
    out[:, 0] = rng.choice(v, size=n_chains, p=stationary_distribution(p))
    for t in range(1, length):
        s = out[:, t - 1]
        nxt = np.searchsorted(flat, s + rng.random(n_chains), side="right") - s * v
        out[:, t] = np.minimum(nxt, v - 1)
    return out


def sample_synthetic(vocab_size: int) -> np.ndarray:
    """The synthetic corpus: (SYNTHETIC_CHAINS, SYNTHETIC_CHAIN_LEN) tokens, identical on every machine."""
    rng = np.random.default_rng([SYNTHETIC_SEED, vocab_size, 1])
    return sample_chains(transition_matrix(vocab_size), SYNTHETIC_CHAINS, SYNTHETIC_CHAIN_LEN, rng)


def empirical_cross_entropy(p: np.ndarray, tokens: np.ndarray) -> float:
    """Mean -log P[x_t, x_{t+1}] over a token sequence: a sample estimate of the entropy rate."""
    t = np.asarray(tokens, dtype=np.int64)
    return float(-np.log(p[t[:-1], t[1:]]).mean())
