"""What a run is at a step, and all a resumed run needs: ``TrainState.state_dict()`` / ``load_state_dict()``.

``state_dict()`` is ``{"model": ..., "optimizer": ..., "trainer": ...}``; ``checkpoint.py`` writes each entry to
``<entry>.pt``. ``trainer`` holds the counters (step, tokens, elapsed seconds, first loss, last training loss and
validation), the schedule's record (``Schedule.state_dict``), every RNG state (Python's ``random``, the numpy
generator that draws the data order, torch's CPU and CUDA generators) and the EBT's replay buffer (S2; plain Python
state of the model, not in its state dict, so it is saved here: resume stays exact for S2 too). With data-parallel
ranks every rank's buffer is saved (``ebt_replay_ranks``; gathering them makes ``state_dict()`` a collective: every
rank calls it) and rank r resumes with entry r. Every other RNG state is the same on every rank.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch

from ebt_scaling.config import TrainConfig
from ebt_scaling.train.distributed import Rank, gather_objects
from ebt_scaling.train.schedule import Schedule


def build_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the model's groups (``optim_groups``; each with its ``lr_mult``, LR set per step by the
    ``Schedule``), fused: one kernel per update, CPU and CUDA (docs/training.md)."""
    groups = model.optim_groups(tcfg.weight_decay)
    for g in groups:
        g.setdefault("lr_mult", 1.0)
        g["lr"] = 0.0
    return torch.optim.AdamW(groups, lr=0.0, betas=(tcfg.beta1, tcfg.beta2), weight_decay=tcfg.weight_decay,
                             fused=True)


class TrainState:
    """The model, its optimizer, the schedule, the data-order generator and the counters of a run."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 data_rng: np.random.Generator, device: torch.device, rank: Rank | None = None,
                 started: float | None = None) -> None:
        self.model, self.optimizer, self.schedule, self.data_rng = model, optimizer, schedule, data_rng
        self.device, self.rank = device, rank
        self.step = 0  # optimizer steps done
        self.tokens = 0  # real target tokens trained on
        self.elapsed_before = 0.0  # wall seconds of the run before it was resumed
        self.initial_loss: float | None = None  # the first step's training loss (divergence reference)
        self.last_train_loss: float | None = None
        self.last_val: dict[str, float] = {}
        self.path: str | None = None  # the checkpoint folder this state was last saved to or restored from
        self._started = time.perf_counter() if started is None else started

    def wall(self) -> float:
        """Wall seconds of the run, earlier sessions included."""
        return self.elapsed_before + (time.perf_counter() - self._started)

    def _replay(self) -> list[Any] | None:
        replay = getattr(self.model, "replay", None)  # the EBT's buffer; a model without one: None
        return replay if isinstance(replay, list) else None

    def state_dict(self) -> dict[str, Any]:
        replay = self._replay()
        replay_ranks = None
        if self.rank is not None and replay is not None and self.model.cfg.replay_buffer_size:
            replay_ranks = gather_objects([tuple(t.cpu() for t in item) for item in replay], self.rank)
        trainer = {
            "step": self.step, "tokens": self.tokens, "elapsed": self.wall(), "initial_loss": self.initial_loss,
            "last_val": self.last_val, "last_train_loss": self.last_train_loss,
            "python_rng": random.getstate(), "data_rng": self.data_rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "ebt_replay": list(replay or []),
            "ebt_replay_ranks": replay_ranks,
            "lr_schedule": self.schedule.state_dict(self.step),
        }
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "trainer": trainer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s output (tensors on this device or the CPU) and every RNG state it holds. Like
        torch's ``Optimizer.load_state_dict``, it may keep the dict's tensors (moments, replay rows) as they are:
        pass a copy to restore the same dict twice."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        st = state["trainer"]
        self.step, self.tokens = int(st["step"]), int(st["tokens"])
        self.elapsed_before, self.initial_loss = float(st["elapsed"]), st["initial_loss"]
        self.last_val, self.last_train_loss = dict(st.get("last_val", {})), st.get("last_train_loss")
        random.setstate(st["python_rng"])
        self.data_rng.bit_generator.state = st["data_rng"]
        torch.set_rng_state(st["torch_rng"])
        replay = self._replay()
        if replay is not None:
            per_rank, r = st.get("ebt_replay_ranks"), self.rank
            mine = per_rank[r.rank] if r is not None and per_rank and len(per_rank) == r.world \
                else st.get("ebt_replay", [])
            replay[:] = [tuple(t.to(self.device) for t in item) for item in mine]
        if self.device.type == "cuda" and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(st["cuda_rng"])
