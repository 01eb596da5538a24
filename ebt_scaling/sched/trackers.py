"""Experiment trackers through Ray Tune's own logger callbacks (``--tracker``, ``[tracking]`` in specs).

* ``mlflow``: ``ray.air.integrations.mlflow.MLflowLoggerCallback``; one MLflow experiment per sweep, one MLflow
  run per trial (named ``r<run id>``) with the run's config as parameters. Tracking URI: ``mlflow_tracking_uri``
  in the spec, else ``$MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` beside the checkpoints
  (MLflow 3 keeps its plain-folder store in maintenance mode and refuses it by default).
* ``tensorboard``: ``ray.tune.logger.TBXLoggerCallback``; event files in each trial's folder under the
  checkpoint storage (``<storage>/<sweep>-<time>-<pid>/r<run id>/``): ``tensorboard --logdir <storage>``.
* ``wandb``: ``ray.air.integrations.wandb.WandbLoggerCallback``; project ``wandb_project`` (default
  ``ebt-scaling``), one group per sweep. Online it needs ``WANDB_API_KEY``; ``WANDB_MODE=offline`` writes runs
  locally (``wandb sync`` uploads them later).

Each trial reports, besides the points the driver stores, the latest value of every metric (``train_loss``,
``val_loss``, ``lr``, ...) with ``timesteps_total`` = the training step, which is what the trackers plot.
The packages are optional extras: ``pip install 'ebt-scaling[mlflow]'`` (``[wandb]``, ``[tensorboard]``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ebt_scaling.config import TRACKERS
from ebt_scaling.errors import ConfigError

PACKAGE = {"mlflow": "mlflow", "tensorboard": "tensorboardX", "wandb": "wandb"}
DEFAULT_WANDB_PROJECT = "ebt-scaling"


def check_trackers(names: tuple[str, ...]) -> None:
    """Each tracker is known and its package importable, before anything is written (one line naming the fix)."""
    for n in names:
        if n not in TRACKERS:
            raise ConfigError(f"--tracker: unknown tracker {n!r}; use {', '.join(TRACKERS)}")
        if importlib.util.find_spec(PACKAGE[n]) is None:
            raise ConfigError(f"--tracker {n}: the {PACKAGE[n]} package is not installed; "
                              f"pip install 'ebt-scaling[{n}]'")


def mlflow_uri(settings: dict[str, Any], storage_path: str) -> str:
    uri = settings.get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return str(uri)
    if "://" in storage_path:
        raise ConfigError("--tracker mlflow: checkpoints go to remote storage, so there is no local default store; "
                          "set [tracking] mlflow_tracking_uri or $MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path(storage_path).expanduser().resolve() / 'mlflow.db'}"


def tracker_callbacks(names: tuple[str, ...], sweep: str, storage_path: str,
                      settings: dict[str, Any] | None = None) -> list[Any]:
    """Tune logger callbacks for ``names`` (call after ``check_trackers``)."""
    settings = settings or {}
    out: list[Any] = []
    for n in dict.fromkeys(names):
        if n == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            out.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(settings, storage_path), experiment_name=sweep,
                                            tags={"sweep": sweep, "tool": "ebt-scaling"}))
        elif n == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            out.append(TBXLoggerCallback())
        elif n == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            out.append(WandbLoggerCallback(project=settings.get("wandb_project") or DEFAULT_WANDB_PROJECT,
                                           group=sweep, log_config=True))
    return out
