"""Experiment trackers (``--tracker``, ``[tracking]`` in specs): every stored metric point, also in MLflow,
TensorBoard or W&B.

Each tracker is a driver-side Ray Tune callback (``sched/tracker_runs.py``: ``tracker_callbacks``) that reads
the points a trial reports (``ebt_points``: the same ``(name, step, value)`` triples the driver writes to the
database) and logs each one at its training step, so a tracker's series equals the database's. One tracker run
per ebt-scaling run, named ``family/axis=level/seed<N>``, with the run's configuration as parameters
(flattened, ``model.n_layer``, ...) and its database id and sweep as tags. A retried trial continues its
tracker run.

* ``mlflow``: ``MlflowClient``; one experiment per sweep. Tracking URI: ``mlflow_tracking_uri`` in the spec,
  else ``$MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the checkpoint storage folder, with the
  experiment's artifacts beside it (``mlartifacts/``; MLflow 3 refuses its plain-folder store by default).
* ``tensorboard``: ``tensorboardX.SummaryWriter``; event files under ``<storage>/tensorboard/<sweep>/``, one
  folder per run (``tensorboard --logdir <storage>/tensorboard/<sweep>``).
* ``wandb``: project ``wandb_project`` (default ``ebt-scaling``), one group per sweep; the training step is
  the logged ``step`` metric (a retried run may log a step again). Online it needs ``WANDB_API_KEY``;
  ``WANDB_MODE=offline`` writes runs locally (``wandb sync`` uploads them later).

The packages are optional extras: ``pip install 'ebt-scaling[mlflow]'`` (``[wandb]``, ``[tensorboard]``).
"""

from __future__ import annotations

import importlib.util
import os
import re
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


def _local_root(storage_path: str) -> Path | None:
    return None if "://" in storage_path else Path(storage_path).expanduser().resolve()


def mlflow_artifacts(uri: str) -> str | None:
    """Artifact location of a default (file-backed SQLite) store: ``mlartifacts/`` beside ``mlflow.db``.
    None for any other tracking URI (a tracking server chooses its own)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()


def tensorboard_dir(storage_path: str, sweep: str) -> Path:
    root = _local_root(storage_path)
    if root is None:
        raise ConfigError("--tracker tensorboard: checkpoints go to remote storage; TensorBoard writes local event "
                          "files, so pass a local --storage")
    return root / "tensorboard" / slug(sweep)


def locations(names: tuple[str, ...], sweep: str, storage_path: str, settings: dict[str, Any]) -> list[str]:
    """One line per tracker saying where its runs go (printed by ``ebt-scale sweep``; URLs masked)."""
    from ebt_scaling.security import mask_url

    out = []
    for n in dict.fromkeys(names):
        if n == "mlflow":
            uri = mlflow_uri(settings, storage_path)
            art = mlflow_artifacts(uri)
            out.append(f"mlflow: experiment {sweep!r} at {mask_url(uri)}"
                       + (f" (artifacts {art}); view with: mlflow ui --backend-store-uri {mask_url(uri)}" if art
                          else ""))
        elif n == "tensorboard":
            out.append(f"tensorboard: event files in {tensorboard_dir(storage_path, sweep)}; view with: "
                       f"tensorboard --logdir {tensorboard_dir(storage_path, sweep)}")
        elif n == "wandb":
            mode = os.environ.get("WANDB_MODE", "online")
            where = (f" (offline: runs in {os.environ.get('WANDB_DIR', '.')}/wandb; upload with `wandb sync`)"
                     if mode in ("offline", "dryrun") else "")
            out.append(f"wandb: project {settings.get('wandb_project') or DEFAULT_WANDB_PROJECT!r}, "
                       f"group {sweep!r}{where}")
    return out


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s).strip("._") or "sweep"


def run_name(task: dict[str, Any]) -> str:
    """``family/axis=level/seed<N>``: what a reader looks for, instead of a database id."""
    spec = task["spec"]
    family = task.get("family") or spec["model"]["family"]
    label = task.get("label") if task.get("label") is not None else spec.get("x")
    return f"{family}/{spec.get('axis')}={label}/seed{spec['train']['seed']}"


def flat_params(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A run's configuration as ``section.field -> text`` (tracker parameters, never metrics)."""
    out: dict[str, str] = {}
    for k, v in spec.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif v is not None:
            out[key] = str(v)
    return out
