"""Validation of a run: its fixed validation set and the token-weighted CE (or frame-weighted SmoothL1) over it.

Validation loss = mean over the predicted units (real tokens; frames) of the modality's loss entry
(``modality.py``: ``info["ce"]``, the EBT's final-step CE; for video ``info["smooth_l1"]``, no perplexity) over
the run's fixed validation set (``validation_batches``: ``eval_tokens``, else ``eval_batches`` batches; in
micro-batches too) and, with ``select_tokens``, ``val_select_loss`` over the selection set disjoint from it
(``selection_batches``; issue 28), the EBT's noise keyed by (seed, window): it is a deterministic function of the
weights and never perturbs the training RNG stream, which is what makes resume bit-exact on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ebt_scaling.config import TrainConfig
from ebt_scaling.records import MetricPoint, MetricSink
from ebt_scaling.train import keyed
from ebt_scaling.train.accumulate import micro_slices
from ebt_scaling.train.distributed import Rank, all_reduce_sums
from ebt_scaling.train.modality import inputs_targets, modality_of, target_count
from ebt_scaling.train.runtime import scalar

EVAL_SEED_OFFSET = 7919  # anything else drawn at validation uses seed + this, in a forked RNG
VAL_KEYS = ("val_loss", "val_loss_initial", "val_energy_gap")
SELECT_WINDOW_OFFSET = 1 << 40  # the selection set's windows draw the EBT's noise under their own keys


def eval_windows(tcfg: TrainConfig, seq_len: int) -> int:
    """Windows of the run's validation set: ``eval_tokens / seq_len`` (rounded up), else ``eval_batches`` x
    batch size."""
    return -(-tcfg.eval_tokens // seq_len) if tcfg.eval_tokens else tcfg.eval_batches * tcfg.batch_size


def validation_batches(corpus: Any, tcfg: TrainConfig, seq_len: int) -> list[np.ndarray]:
    """The run's validation windows in batches of its batch size. With ``eval_tokens`` they are the same
    windows for every batch size (one validation set per sweep); without, ``eval_batches`` x batch size."""
    n_windows = -(-tcfg.eval_tokens // seq_len) if tcfg.eval_tokens else None
    return corpus.val_batches(tcfg.eval_batches, tcfg.batch_size, seq_len, n_windows)


def selection_batches(corpus: Any, tcfg: TrainConfig, seq_len: int) -> list[np.ndarray]:
    """The run's selection set (``select_tokens``; issue 28): ``select_tokens / seq_len`` windows disjoint from the
    evaluation set (``StoreData.select_batches``), the same for every run of a sweep; empty when unset."""
    if not tcfg.select_tokens:
        return []
    return corpus.select_batches(tcfg.batch_size, seq_len, eval_windows(tcfg, seq_len),
                                 -(-tcfg.select_tokens // seq_len))


def evaluate(model: torch.nn.Module, batches: list[torch.Tensor], *, seed: int, device: torch.device,
             autocast: Callable[[], Any], micro_batch_size: int | None = None,
             rank: Rank | None = None, first_window: int = 0) -> dict[str, float]:
    """Token-weighted validation CE (nats; video: frame-weighted SmoothL1, no ``val_ppl``) and, for the EBT,
    initial-step loss and energy gap. Batches run in
    micro-batches of ``micro_batch_size`` rows; the model's random inputs (``model.draw``: the EBT's noise) are
    keyed by (seed, window index in the validation set), so neither the batch size nor the split changes them.
    With ``rank`` (data-parallel workers) each rank evaluates its slice of every batch and the sums are reduced:
    every rank returns the same numbers. Runs under ``no_grad`` (the EBT's descent turns grad on for itself).
    ``first_window``: the key of the first window (the selection set's keys start at ``SELECT_WINDOW_OFFSET``)."""
    was_training = model.training
    mod = modality_of(model.cfg)
    model.eval()
    sums: dict[str, float] = {}
    n_tok = 0
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed + EVAL_SEED_OFFSET)
            window = first_window
            for whole in batches:
                own = rank.shard(whole.shape[0]) if rank is not None else slice(None)
                batch = whole[own]
                window += own.start or 0
                for sl in micro_slices(batch.shape[0], micro_batch_size) if batch.shape[0] else []:
                    idx, tgt = inputs_targets(batch[sl])
                    gens = keyed.Generators(idx.device, seed, [(keyed.EVAL, (window + j,)) for j in range(len(idx))])
                    with autocast():
                        draws = model.draw(gens, idx.shape[1], model.landscapes(False), idx.device, train=False)
                        loss, info = model.loss(idx, tgt, draws)
                    window += idx.shape[0]
                    n = target_count(tgt)
                    n_tok += n
                    vals = {"val_loss": scalar(info.get(mod.val_key, loss))}
                    if mod.initial_key in info:
                        vals["val_loss_initial"] = scalar(info[mod.initial_key])
                    if "energy_initial" in info and "energy_final" in info:
                        vals["val_energy_gap"] = scalar(info["energy_initial"]) - scalar(info["energy_final"])
                    for k, v in vals.items():
                        sums[k] = sums.get(k, 0.0) + v * n
                window += whole.shape[0] - (own.stop if own.stop is not None else whole.shape[0])
    finally:
        model.train(was_training)
    if rank is not None:
        sums, n_tok = all_reduce_sums(sums, n_tok, VAL_KEYS, rank, device)
    out = {k: v / max(1, n_tok) for k, v in sums.items()}
    if mod.perplexity:
        out["val_ppl"] = math.exp(out["val_loss"]) if out["val_loss"] < 700 else math.inf
    return out


class Validation:
    """A run's validation: its fixed set (on the device), when it is due, and ``run(step)``, which evaluates the
    model and logs the points to the sink."""

    def __init__(self, model: torch.nn.Module, corpus: Any, tcfg: TrainConfig, seq_len: int, device: torch.device,
                 autocast: Callable[[], Any], sink: MetricSink, rank: Rank | None = None) -> None:
        self.model, self.tcfg, self.device, self.autocast, self.sink, self.rank = \
            model, tcfg, device, autocast, sink, rank
        self.corpus, self.seq_len = corpus, seq_len
        self.batches = [torch.from_numpy(b).to(device) for b in validation_batches(corpus, tcfg, seq_len)]
        self.select = [torch.from_numpy(b).to(device) for b in selection_batches(corpus, tcfg, seq_len)]

    def baselines(self) -> dict[str, float]:
        """The reference losses of the result (``Modality.baselines``: unigram, or copy and mean)."""
        return modality_of(self.model.cfg).baselines(self.corpus, eval_windows(self.tcfg, self.seq_len))

    def due(self, step: int) -> bool:
        """Every ``eval_interval`` steps and the last."""
        return bool(self.tcfg.eval_interval and step % self.tcfg.eval_interval == 0) or step == self.tcfg.steps

    def run(self, step: int) -> dict[str, float]:
        out = evaluate(self.model, self.batches, seed=self.tcfg.seed, device=self.device, autocast=self.autocast,
                       micro_batch_size=self.tcfg.micro_batch_size, rank=self.rank)
        if self.select:  # the selection set's loss (a [tune] sweep picks the LR by it; the fit uses val_loss)
            sel = evaluate(self.model, self.select, seed=self.tcfg.seed, device=self.device, autocast=self.autocast,
                           micro_batch_size=self.tcfg.micro_batch_size, rank=self.rank,
                           first_window=SELECT_WINDOW_OFFSET)
            out["val_select_loss"] = sel["val_loss"]
        self.sink.log([MetricPoint(k, step, v) for k, v in sorted(out.items())])
        return out
