"""Checkpoints: one folder per optimizer step, written atomically.

Layout of ``<checkpoint_dir>/step_000123/``::

    model.pt      model.state_dict()
    optimizer.pt  optimizer.state_dict() (AdamW moments, param groups with lr and lr_mult)
    trainer.pt    step, tokens, elapsed time, initial loss, last metrics, and every RNG state:
                  torch CPU (+ CUDA), python ``random``, the numpy data-sampler generator
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
from typing import Any

import torch

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError

KEEP_LAST = 2
LATEST = "LATEST"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(root: str | os.PathLike, step: int, spec: RunSpec, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any]) -> str:
    """Write the checkpoint of ``step`` under ``root`` atomically and return its folder."""
    root_p = pathlib.Path(root)
    root_p.mkdir(parents=True, exist_ok=True)
    final = root_p / step_dir_name(step)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=root_p, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        torch.save(model.state_dict(), tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer.pt")
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


def load_checkpoint(path: str | os.PathLike, spec: RunSpec, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device) -> dict[str, Any]:
    """Restore model and optimizer in place; return the trainer state (RNG states are not yet applied)."""
    folder = resolve_checkpoint(path)
    meta = json.loads((folder / "spec.json").read_text())
    if meta.get("config_hash") != spec.config_hash:
        raise ConfigError(f"resume_from: {folder} was written by a different run (config hash "
                          f"{str(meta.get('config_hash'))[:12]}.. vs {spec.config_hash[:12]}..); "
                          "resume with the RunSpec that wrote it")
    model.load_state_dict(torch.load(folder / "model.pt", map_location=device, weights_only=True))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    state["path"] = str(folder)
    return state
