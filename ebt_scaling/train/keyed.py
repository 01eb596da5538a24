"""Random draws keyed by what they are for, not by when they are made (issue 18).

Every per-sample random draw of a training or validation step (the EBT's initial candidate logits, Langevin noise,
random step size) comes from a generator of its own, seeded with a hash of (seed, stream, step, global sample
index). A sample's draws therefore do not depend on the other samples of its batch, on how the batch is split
into micro-batches, or (with data-parallel workers, each on its shard of the batch) on which worker computes it:
the draws of samples 4..7 are the same in a batch of 8 as in a micro-batch of 4. Per-step draws (S2's inner-step
count) use the same key without a sample index, so every micro-batch and worker of a step sees the same value.

Streams: ``TRAIN`` (fresh training samples; index = the sample's position in the global batch), ``REPLAYED``
(rows drawn from a worker's replay buffer; index = (rank, position)), ``STEPS`` (S2's step count), ``REPLAY_PICK``
(which buffer rows a worker replays) and ``EVAL`` (validation; index = the window's position in the validation set,
so validation noise is the same whatever the batch size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import overload

import torch

TRAIN, REPLAYED, STEPS, REPLAY_PICK, EVAL = "train", "replayed", "steps", "replay_pick", "eval"


def key(seed: int, stream: str, *index: int) -> int:
    """A 63-bit generator seed for (seed, stream, *index): blake2b of their repr, stable across runs and machines."""
    digest = hashlib.blake2b(repr((int(seed), stream, *map(int, index))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(device: torch.device | str, seed: int, stream: str, *index: int) -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``key(seed, stream, *index)``."""
    return torch.Generator(device=device).manual_seed(key(seed, stream, *index))


def row_generators(device: torch.device | str, seed: int, stream: str, step: int,
                   rows: Iterable[int]) -> list[torch.Generator]:
    """One generator per sample: ``generator(device, seed, stream, step, row)`` for each global row index."""
    return [generator(device, seed, stream, step, r) for r in rows]


class Generators(Sequence[torch.Generator]):
    """``generator(device, seed, stream, *index)`` for every ``(stream, index)`` of ``keys``, made when read (each
    read a fresh one): a model that draws nothing (the T++'s ``draw``) costs no generator at all."""

    def __init__(self, device: torch.device | str, seed: int, keys: Sequence[tuple[str, tuple[int, ...]]]) -> None:
        self.device, self.seed, self.keys = device, seed, keys

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> torch.Generator: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[torch.Generator]: ...

    def __getitem__(self, i: int | slice) -> torch.Generator | Sequence[torch.Generator]:
        if isinstance(i, slice):
            return Generators(self.device, self.seed, self.keys[i])
        stream, index = self.keys[i]
        return generator(self.device, self.seed, stream, *index)
