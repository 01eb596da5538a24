"""The block split of a token stream, shared by the corpus cache (``corpus.py``) and the built-in corpora's
packed sampling (``sampler.py``): one rule in a module of its own, so neither of them imports the other for it.

The stream is cut into contiguous blocks of ``block_size`` tokens (4096, or fewer for small corpora: about
400 blocks); a permutation seeded with ``split_seed`` picks ``round(val_fraction * blocks)`` (at least 1, at
most all but one) of them for validation.
"""

from __future__ import annotations

import numpy as np

from ebt_scaling.errors import DataError

MAX_BLOCK = 4096
MIN_BLOCK = 256
TARGET_BLOCKS = 400


def split_blocks(n_tokens: int, val_fraction: float, split_seed: int,
                 block_size: int | None = None) -> tuple[int, np.ndarray]:
    """(block size, sorted indices of validation blocks) of a stream of ``n_tokens`` tokens."""
    if block_size is None:
        block_size = int(np.clip(n_tokens // TARGET_BLOCKS, MIN_BLOCK, MAX_BLOCK))
    n_blocks = -(-n_tokens // block_size)
    if n_blocks < 2:
        raise DataError(f"corpus too small: {n_tokens} tokens make {n_blocks} block(s) of {block_size}; "
                        "use more text (at least a few thousand tokens)")
    n_val = min(n_blocks - 1, max(1, round(val_fraction * n_blocks)))
    perm = np.random.default_rng(split_seed).permutation(n_blocks)
    return block_size, np.sort(perm[:n_val])
