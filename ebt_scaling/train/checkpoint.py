"""Checkpoints: one folder per optimizer step, written atomically; save and restore of a run in one place.

``Checkpointer`` is what ``train()`` uses: ``restore(state, path)`` loads a folder into a ``TrainState``,
``save(state)`` writes ``state.state_dict()`` at the steps ``due`` names (every ``checkpoint_interval`` steps and
the last, when the spec has a ``checkpoint_dir``), on rank 0 only, and tells the sink.

Layout of ``<checkpoint_dir>/step_000123/`` (one file per entry of ``TrainState.state_dict()``)::

    model.pt      model.state_dict()
    optimizer.pt  optimizer.state_dict() (AdamW moments, param groups with lr and lr_mult)
    trainer.pt    step, tokens, elapsed time, initial loss, last metrics, the schedule's record, every RNG
                  state: torch CPU (+ CUDA), python ``random``, the numpy data-sampler generator; the EBT's
                  replay buffer (train/state.py)
    spec.json     the RunSpec and its config hash (a resume with another spec is refused)

The folder is written under a temporary name and renamed into place, so a crash leaves either the
previous checkpoint or the complete new one. ``LATEST`` names the newest folder; older folders beyond
the newest ``KEEP_LAST`` are deleted. Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

import torch

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError
from ebt_scaling.records import MetricSink

if TYPE_CHECKING:
    from ebt_scaling.train.state import TrainState

KEEP_LAST = 2
LATEST = "LATEST"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


PARTS = ("model", "optimizer", "trainer")  # the entries of TrainState.state_dict(), one file each


class Checkpointer:
    """Save and restore of one run: ``spec.checkpoint_dir``'s folders, written by the lead rank only."""

    def __init__(self, spec: RunSpec, sink: MetricSink, *, lead: bool = True) -> None:
        self.spec, self.sink, self.lead = spec, sink, lead

    def due(self, step: int) -> bool:
        t = self.spec.train
        return bool(self.spec.checkpoint_dir) and ((t.checkpoint_interval and step % t.checkpoint_interval == 0)
                                                   or step == t.steps)

    def save(self, state: TrainState) -> None:
        """Write ``state`` (every rank calls this: gathering the replay buffers is a collective), tell the sink."""
        sd = state.state_dict()
        if self.lead:
            assert self.spec.checkpoint_dir is not None
            state.path = save_checkpoint(self.spec.checkpoint_dir, state.step, self.spec, sd)
            self.sink.checkpoint(state.path, state.step)
        else:  # rank 0 wrote it; the call keeps every rank's sink in step (see train/distributed.py)
            self.sink.checkpoint("", state.step)

    def restore(self, state: TrainState, path: str | os.PathLike) -> None:
        """Load the checkpoint at ``path`` (a folder or a root with ``LATEST``) of this spec into ``state``."""
        sd = load_checkpoint(path, self.spec, state.device)
        state.load_state_dict(sd)
        state.path = sd["path"]


def save_checkpoint(root: str | os.PathLike, step: int, spec: RunSpec, state: dict[str, Any]) -> str:
    """Write ``state`` (``TrainState.state_dict()``) as the checkpoint of ``step`` under ``root`` atomically and
    return its folder."""
    root_p = pathlib.Path(root)
    root_p.mkdir(parents=True, exist_ok=True)
    final = root_p / step_dir_name(step)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=root_p, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        for part in PARTS:
            torch.save(state[part], tmp / f"{part}.pt")
        (tmp / "spec.json").write_text(json.dumps({"config_hash": spec.config_hash, "spec": spec.to_dict()},
                                                  indent=1, sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # e.g. a re-run of the same step after a restore
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest_tmp = root_p / f".{LATEST}.{os.getpid()}.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, root_p / LATEST)
    _prune(root_p, keep=final.name)
    return str(final)


def _prune(root: pathlib.Path, keep: str) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-KEEP_LAST]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike) -> pathlib.Path:
    """A checkpoint folder, or a checkpoint root holding ``LATEST`` -> the folder to load."""
    p = pathlib.Path(path).expanduser()
    if (p / "trainer.pt").exists():
        return p
    if (p / LATEST).exists():
        q = p / (p / LATEST).read_text().strip()
        if (q / "trainer.pt").exists():
            return q
    raise ConfigError(f"resume_from: {path} is not a checkpoint (no trainer.pt and no {LATEST}); "
                      "give a step_* folder written by `ebt-scale train --checkpoint-dir` or its parent")


def load_checkpoint(path: str | os.PathLike, spec: RunSpec, device: torch.device) -> dict[str, Any]:
    """The checkpoint at ``path`` written by ``spec``'s run, as ``TrainState.state_dict()`` gave it (model and
    optimizer tensors on ``device``, the trainer entry on the CPU) plus ``"path"``, the folder it came from."""
    folder = resolve_checkpoint(path)
    meta = json.loads((folder / "spec.json").read_text())
    if meta.get("config_hash") != spec.config_hash:
        raise ConfigError(f"resume_from: {folder} was written by a different run (config hash "
                          f"{str(meta.get('config_hash'))[:12]}.. vs {spec.config_hash[:12]}..); "
                          "resume with the RunSpec that wrote it")
    state: dict[str, Any] = {part: torch.load(folder / f"{part}.pt", map_location=device if part != "trainer"
                                              else "cpu", weights_only=True) for part in PARTS}
    state["path"] = str(folder)
    return state
