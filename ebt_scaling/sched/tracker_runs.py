"""The trackers' Ray Tune callbacks (see ``ebt_scaling.sched.trackers`` for what each writes and where)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ebt_scaling.sched.trackers import (
    DEFAULT_WANDB_PROJECT,
    flat_params,
    mlflow_artifacts,
    mlflow_uri,
    run_name,
    slug,
    tensorboard_dir,
)


class TrackerCallback(Callback):
    """Base: opens one tracker run per ebt-scaling run on its first result, logs every reported point at its
    step, and closes the run when its trial ends (a retried trial keeps its tracker run)."""

    def __init__(self, sweep: str) -> None:
        self.sweep = sweep
        self._runs: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig (callbacks included) into the experiment folder: open handles stay here.
        d = self.__dict__.copy()
        d["_runs"] = {}
        return d

    # The three things a tracker does.
    def open(self, task: dict[str, Any]) -> Any:
        raise NotImplementedError

    def log(self, handle: Any, points: list[tuple[str, int, float]]) -> None:
        raise NotImplementedError

    def close(self, handle: Any, ok: bool) -> None:
        raise NotImplementedError

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        task = trial.config["run"]
        rid = int(task["run_id"])
        if rid not in self._runs:
            self._runs[rid] = self.open(task)
        points = [(str(n), int(s), float(v)) for n, s, v in result.get("ebt_points") or ()]
        if points:
            self.log(self._runs[rid], points)

    def _end(self, trial: Any, ok: bool) -> None:
        handle = self._runs.pop(int(trial.config["run"]["run_id"]), None)
        if handle is not None:
            self.close(handle, ok)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, False)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for handle in self._runs.values():
            self.close(handle, False)
        self._runs.clear()


class MLflowTracker(TrackerCallback):
    def __init__(self, sweep: str, uri: str) -> None:
        super().__init__(sweep)
        self.uri = uri
        self._experiment_id: str | None = None

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def open(self, task: dict[str, Any]) -> Any:
        from mlflow.entities import Param

        client = self._client()
        if self._experiment_id is None:
            exp = client.get_experiment_by_name(self.sweep)
            self._experiment_id = (exp.experiment_id if exp is not None else client.create_experiment(
                self.sweep, artifact_location=mlflow_artifacts(self.uri), tags={"tool": "ebt-scaling"}))
        name = run_name(task)
        tags = {"sweep": self.sweep, "tool": "ebt-scaling", "run_id": str(task["run_id"]),
                "config_hash": str(task.get("config_hash", ""))}
        # A retried sweep (a new driver) continues the run's MLflow run instead of opening a second one.
        found = client.search_runs([self._experiment_id], f"tags.run_id = '{task['run_id']}'", max_results=1)
        if found:
            mrun_id = found[0].info.run_id
            client.update_run(mrun_id, status="RUNNING")
        else:
            mrun_id = client.create_run(self._experiment_id, tags=tags, run_name=name).info.run_id
            params = [Param(k, v[:6000]) for k, v in flat_params(task["spec"]).items()]
            for i in range(0, len(params), 100):  # MLflow's per-batch limit
                client.log_batch(mrun_id, params=params[i:i + 100])
        return (client, mrun_id)

    def log(self, handle: Any, points: list[tuple[str, int, float]]) -> None:
        from mlflow.entities import Metric

        client, mrun_id = handle
        now = int(time.time() * 1000)
        metrics = [Metric(n, v, now, s) for n, s, v in points]
        for i in range(0, len(metrics), 1000):
            client.log_batch(mrun_id, metrics=metrics[i:i + 1000])

    def close(self, handle: Any, ok: bool) -> None:
        client, mrun_id = handle
        client.set_terminated(mrun_id, status="FINISHED" if ok else "FAILED")


class TensorBoardTracker(TrackerCallback):
    def __init__(self, sweep: str, logdir: Path) -> None:
        super().__init__(sweep)
        self.logdir = logdir

    def open(self, task: dict[str, Any]) -> Any:
        from tensorboardX import SummaryWriter

        w = SummaryWriter(logdir=str(self.logdir / run_name(task)))
        w.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(flat_params(task["spec"]).items())))
        return w

    def log(self, handle: Any, points: list[tuple[str, int, float]]) -> None:
        for n, s, v in points:
            handle.add_scalar(n, v, global_step=s)
        handle.flush()

    def close(self, handle: Any, ok: bool) -> None:
        handle.close()


class WandbTracker(TrackerCallback):
    def __init__(self, sweep: str, project: str) -> None:
        super().__init__(sweep)
        self.project = project

    def open(self, task: dict[str, Any]) -> Any:
        import wandb

        run = wandb.init(project=self.project, group=self.sweep, name=run_name(task), reinit="create_new",
                         config=flat_params(task["spec"]), tags=[self.sweep],
                         id=f"{slug(self.sweep)}-{task['run_id']}", resume="allow")
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        return run

    def log(self, handle: Any, points: list[tuple[str, int, float]]) -> None:
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        for n, s, v in points:
            by_step[s][n] = v
        for s in sorted(by_step):
            handle.log({"step": s, **by_step[s]})

    def close(self, handle: Any, ok: bool) -> None:
        handle.finish(exit_code=0 if ok else 1)


def tracker_callbacks(names: tuple[str, ...], sweep: str, storage_path: str,
                      settings: dict[str, Any] | None = None) -> list[Any]:
    """Tune callbacks for ``names`` (call after ``check_trackers``)."""
    settings = settings or {}
    out: list[Any] = []
    for n in dict.fromkeys(names):
        if n == "mlflow":
            out.append(MLflowTracker(sweep, mlflow_uri(settings, storage_path)))
        elif n == "tensorboard":
            out.append(TensorBoardTracker(sweep, tensorboard_dir(storage_path, sweep)))
        elif n == "wandb":
            out.append(WandbTracker(sweep, settings.get("wandb_project") or DEFAULT_WANDB_PROJECT))
    return out
