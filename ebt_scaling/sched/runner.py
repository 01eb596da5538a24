"""Run a list of trial tasks on Ray Tune (local instance by default, or an existing cluster).

* a plain grid (one grid point per task), the default FIFO scheduler: no early stopping, every point is a
  measurement;
* resources per trial via ``tune.with_resources`` (fractional GPUs allowed);
* ``FailureConfig(max_failures=N)``: a trial that raises or diverges is retried from its latest checkpoint;
* ``TUNE_GLOBAL_CHECKPOINT_S=0``, short trial directory names, Tune's own loggers and tables off;
* a driver-side callback (``SweepCallback``) hands metric points and run status to ``sink``.

The database is not imported here: ``sink`` is any object with the ``DriverSink`` methods.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ebt_scaling.records import MetricPoint
from ebt_scaling.sched.progress import SweepProgress

# Tune reads these at import time.
_TUNE_ENV = {
    "TUNE_GLOBAL_CHECKPOINT_S": "0",  # experiment state saved at every step: finished trials never rerun
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard result files per trial
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1000",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}
TEMP_PREFIX = "ebtray-"


class DriverSink(Protocol):
    """What the driver callback needs (implemented by the sweep service on top of the database)."""

    def started(self, run_id: int, host: str | None, device: str | None) -> None: ...
    def metrics(self, batch: dict[int, list[MetricPoint]]) -> None: ...
    def checkpoint(self, run_id: int, path: str, step: int) -> None: ...
    def retrying(self, run_id: int, reason: str, resume_step: int | None) -> None: ...
    def finished(self, run_id: int, status: str, reason: str | None, result: dict[str, Any]) -> None: ...
    def heartbeat(self, run_ids: list[int]) -> None: ...
    # Optional: ``cancel_requested() -> bool``, polled every few seconds; True stops the sweep like Ctrl-C.


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: $RAY_ADDRESS, else a fresh local instance
    gpus_per_trial: float = 0.0  # with workers_per_trial > 1: per worker (0 or 1)
    cpus_per_trial: float = 1.0  # with workers_per_trial > 1: per worker
    workers_per_trial: int = 1  # data-parallel workers of one run (Ray Train, sched/ddp.py)
    max_concurrent: int | None = None
    max_retries: int = 2
    storage_path: str = "ebt_scale_runs"
    experiment_name: str = "sweep"
    num_cpus: int | None = None  # local instance only (default: all cores)
    num_gpus: int | None = None
    report_every_s: float = 2.0
    flush_s: float = 1.0
    reuse_actors: bool = True
    progress: str = "auto"  # auto | rich | plain | off
    train_fn: str | None = None  # dotted "module:function"; None = ebt_scaling.train:train
    trackers: tuple[str, ...] = ()  # mlflow | tensorboard | wandb (sched/trackers.py)
    tracking: dict[str, Any] = field(default_factory=dict)  # [tracking] settings of the spec


@dataclass
class RunnerOutcome:
    finished: dict[int, str] = field(default_factory=dict)  # run_id -> status
    cancelled: list[int] = field(default_factory=list)
    interrupted: bool = False
    cancel_requested: bool = False  # stopped by `ebt-scale cancel`
    wall_s: float = 0.0
    import_s: float = 0.0
    ray_init_s: float = 0.0
    fit_s: float = 0.0
    shutdown_s: float = 0.0


def tune_env() -> None:
    """Set Tune's environment switches (read when ray.tune is imported)."""
    for k, v in _TUNE_ENV.items():
        os.environ.setdefault(k, v)


def prefetch_ray() -> None:
    """Import Ray and Tune in a background thread (about 2 s) while the driver plans in the database."""
    import threading

    def work() -> None:
        tune_env()
        try:
            import ray.tune  # noqa: F401

            import ebt_scaling.sched.callback  # noqa: F401
        except Exception:  # the foreground import reports any problem
            pass

    threading.Thread(target=work, name="ray-prefetch", daemon=True).start()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _procs_using(folder: str) -> list[int]:
    """PIDs whose command line mentions the folder ``folder`` itself or a path inside it (Linux /proc; empty
    elsewhere). The name must end there: ``/tmp/ebtray-1487`` does not match ``/tmp/ebtray-14870/...``."""
    import re

    pattern = re.compile(re.escape(folder.rstrip("/")) + r"(?![\w.\-])")
    pids = []
    me = os.getpid()
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern.search(cmd):
            pids.append(int(d.name))
    return pids


def _driver_pid(folder_name: str) -> int | None:
    """The driver PID in ``ebtray-<pid>-<random>`` (or the older ``ebtray-<pid>``); None for other names."""
    rest = folder_name[len(TEMP_PREFIX):] if folder_name.startswith(TEMP_PREFIX) else ""
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def driver_temp_dirs(pid: int, temp_root: str | None = None) -> list[Path]:
    """The local Ray temp folders of driver ``pid`` (normally one)."""
    root = Path(temp_root or tempfile.gettempdir())
    return sorted(d for d in root.glob(f"{TEMP_PREFIX}{pid}*") if _driver_pid(d.name) == pid)


def make_temp_dir(temp_root: str | None = None) -> str:
    """A new private (0700) folder ``<tmp>/ebtray-<our pid>-<random>`` for a local Ray instance: created
    atomically under an unpredictable name, so nobody can pre-create it, and short, as Ray's socket paths
    must be."""
    return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=temp_root or tempfile.gettempdir())


def cleanup_leftover_ray(temp_root: str | None = None) -> list[int]:
    """Kill (by PID) the processes of local Ray instances whose driver is gone.

    Every local instance we start lives in ``<tmp>/ebtray-<driver pid>-<random>`` (``make_temp_dir``); if
    that driver died (kill -9), its gcs_server, raylet, agents and workers may still run. Only processes that
    name that exact folder are killed, and only folders we own are looked at. Returns the PIDs killed."""
    root = Path(temp_root or tempfile.gettempdir())
    killed: list[int] = []
    for d in root.glob(TEMP_PREFIX + "*"):
        pid = _driver_pid(d.name)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if d.is_symlink() or not d.is_dir() or d.stat().st_uid != os.getuid():
                continue  # not a folder of ours: another user's, or planted
        except OSError:
            continue
        for p in _procs_using(str(d)):
            try:
                os.kill(p, signal.SIGKILL)
                killed.append(p)
            except (ProcessLookupError, PermissionError):
                pass
        import shutil

        shutil.rmtree(d, ignore_errors=True)
    return killed


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process (Linux /proc; empty elsewhere). The start
    time tells a process from a later one that reuses its PID."""
    table: dict[int, tuple[int, int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(d.name)] = (int(fields[1]), int(fields[19]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def _set_child_subreaper(on: bool) -> bool:
    """Make this process (or stop it being) the "subreaper" of its descendants (Linux ``prctl``): a process whose
    parent dies is re-parented here instead of to init, so it can still be found by parentage. False where the
    call is not available."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, int(on), 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


class LocalRayProcesses:
    """The processes of the local Ray instance this driver starts, found by parentage, never by command line
    (Ray rewrites its agents' command lines to ``ray::DashboardAgent`` and the like).

    Built just before ``ray.init``: the driver's children from then on (``started``) are Ray's (gcs_server,
    raylet, monitor, ...), and so is everything below them; their agents and workers are the raylet's children.
    The driver is made the subreaper of its descendants, so an agent whose raylet is killed before it could stop
    it (a Ctrl-C during Ray's start-up) is re-parented to the driver rather than orphaned to init for a minute.
    ``stop`` runs ``ray.shutdown()`` once, then kills whatever of that tree survived it, and the processes that
    were re-parented to the driver during the shutdown."""

    def __init__(self) -> None:
        self.me = os.getpid()
        table = _proc_table()
        self.before = {(p, st) for p, (pp, st) in table.items() if pp == self.me}  # not Ray's
        self.roots: set[tuple[int, int]] = set()
        self.subreaper = _set_child_subreaper(True)
        self.stopped = False

    def _children(self, table: dict[int, tuple[int, int]]) -> set[tuple[int, int]]:
        return {(p, st) for p, (pp, st) in table.items() if pp == self.me}

    def started(self) -> None:
        """After ``ray.init`` returned or was interrupted: the driver's new children are Ray's."""
        if not self.roots:
            self.roots = self._children(_proc_table()) - self.before

    def tree(self, table: dict[int, tuple[int, int]]) -> set[tuple[int, int]]:
        """The Ray processes alive in ``table``: the roots and all their descendants."""
        return _with_descendants(table, self.roots)

    def stop(self, ray: Any) -> list[int]:
        """``ray.shutdown()`` (once), then SIGKILL to every Ray process that outlived it, until none is left (a
        process killed here re-parents its own children to the driver; they are taken in the next round). The
        driver's children among them are reaped. Returns the PIDs killed."""
        if self.stopped:
            return []
        self.stopped = True
        self.started()
        table = _proc_table()
        tree, kids = self.tree(table), self._children(table)
        killed: list[int] = []
        try:
            ray.shutdown()
        finally:
            done: set[tuple[int, int]] = set()
            for _ in range(8):
                table = _proc_table()
                # Ray's tree as it was, and what was re-parented to the driver since (orphans of Ray processes).
                todo = _with_descendants(table, tree | (self._children(table) - kids - self.before)) - done
                todo = {t for t in todo if not _zombie(t[0]) or table[t[0]][0] == self.me}
                if not todo:
                    break
                killed += _kill(sorted(todo), self.me)
                done |= todo
            if self.subreaper:
                _set_child_subreaper(False)
        return killed


def _with_descendants(table: dict[int, tuple[int, int]], seeds: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The processes ``seeds`` ((pid, start time) pairs) still in ``table``, and all their descendants."""
    found = {(p, st) for p, st in seeds if table.get(p, (0, -1))[1] == st}
    frontier = {p for p, _ in found}
    while frontier:
        nxt = {(p, st) for p, (pp, st) in table.items() if pp in frontier and (p, st) not in found}
        found |= nxt
        frontier = {p for p, _ in nxt}
    return found


def _kill(targets: list[tuple[int, int]], me: int, wait_s: float = 5.0) -> list[int]:
    """SIGKILL the processes ``targets`` ((pid, start time) pairs: a PID reused meanwhile is left alone) and wait
    until they are gone, reaping those that are the driver's children. Returns the PIDs signalled."""
    table = _proc_table()
    killed = []
    for p, st in targets:
        if table.get(p, (0, -1))[1] != st:
            continue
        try:
            os.kill(p, signal.SIGKILL)
            killed.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + wait_s
    pending = list(killed)
    while pending:
        for p in pending:  # ours (started or re-parented here): reap it; another's: ChildProcessError
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        table = _proc_table()
        pending = [p for p in pending if p in table and (table[p][0] == me or not _zombie(p))]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return killed


def _zombie(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def raise_lost_interrupt() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came but never surfaced. Python raises KeyboardInterrupt wherever the
    main thread happens to be, and inside a finaliser or a library's catch-all it is swallowed: the sweep then
    ran on as if nothing happened (exit 0 after a Ctrl-C). The CLI's SIGINT handler (``cli.main``) remembers the
    signal (``seen``); the runner looks before starting Ray and before the trials start."""
    if getattr(signal.getsignal(signal.SIGINT), "seen", False):
        raise KeyboardInterrupt


def stop_ray(ray: Any, procs: LocalRayProcesses | None, temp_dir: str | None) -> None:
    """Shut Ray down once, with a further Ctrl-C ignored meanwhile (a second interrupt must not leave half of a
    local instance running): a local instance's surviving processes are killed (``LocalRayProcesses.stop``) and
    its temp folder removed; a cluster is only disconnected from."""
    import shutil
    import threading

    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        if procs is not None:
            procs.stop(ray)
        else:
            ray.shutdown()
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        if main:
            signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (ray.init would retry for minutes)."""
    import re
    import socket

    m = re.match(r"^(?:ray://)?\[?([^\]/]+?)\]?:(\d+)$", address.strip())
    if not m:  # "auto" or another form: leave it to Ray
        return
    host, port = m.group(1), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        from ebt_scaling.errors import ConfigError

        raise ConfigError(f"--address {address}: nothing answers there ({exc.strerror or exc}); start the head "
                          "node (ray start --head) or fix the address; leave --address and RAY_ADDRESS unset "
                          "for a local Ray instance") from None


def check_request(opts: RayOptions) -> None:
    """Refuse, in one line, a trial that would train on fewer devices than it reserves."""
    from ebt_scaling.errors import ConfigError
    from ebt_scaling.sweeps.plan import gpu_request_problem  # the one rule, shared with the cost plan

    if opts.workers_per_trial < 1:
        raise ConfigError(f"resources: workers_per_trial must be >= 1, got {opts.workers_per_trial}")
    if (why := gpu_request_problem(opts.gpus_per_trial, opts.workers_per_trial)) is not None:
        raise ConfigError(why)


def trial_footprint(opts: RayOptions) -> tuple[float, float]:
    """(CPUs, GPUs) one trial holds while it runs: its workers' together."""
    n = max(1, opts.workers_per_trial)
    return opts.cpus_per_trial * n, opts.gpus_per_trial * n


def _task_resources(opts: RayOptions) -> dict[str, float]:
    if opts.workers_per_trial > 1:
        # The trial only drives a TorchTrainer, whose own placement group reserves the workers (placement groups
        # do not nest); Tune refuses an all-zero request, so the driver reserves 1 MiB of memory and no CPU.
        return {"cpu": 0.0, "memory": float(1 << 20)}
    res: dict[str, float] = {"cpu": float(opts.cpus_per_trial)}
    if opts.gpus_per_trial:
        res["gpu"] = float(opts.gpus_per_trial)
    return res


def run_trials(tasks: list[dict[str, Any]], sink: DriverSink, opts: RayOptions,
               progress_name: str = "sweep") -> RunnerOutcome:
    """Run ``tasks`` (dicts with ``run_id``, ``spec``, optional ``resume_from``/``resume_step``/``weight``)."""
    out = RunnerOutcome()
    t0 = time.monotonic()
    if not tasks:
        return out
    check_request(opts)
    tune_env()
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    local = address is None or address == "local"
    temp_dir = None
    if local:
        cleanup_leftover_ray()
        # Ray's socket paths must stay short: a short private directory named after this driver's PID. Ray
        # makes its own temp dir world-writable (0777), so it gets a subfolder and ours stays 0700.
        temp_dir = make_temp_dir()
        # Workers of a local instance inherit this environment: make the package importable from a checkout.
        pkg_parent = str(Path(__file__).resolve().parents[2])
        pp = os.environ.get("PYTHONPATH", "")
        if pkg_parent not in pp.split(os.pathsep):
            os.environ["PYTHONPATH"] = pkg_parent + (os.pathsep + pp if pp else "")

    else:
        check_reachable(str(address))

    progress = SweepProgress(progress_name, len(tasks), opts.progress)
    progress.start()
    t_imp = time.monotonic()
    import ray
    from ray import tune

    from ebt_scaling.sched.callback import SweepCallback
    from ebt_scaling.sched.tracker_runs import tracker_callbacks
    from ebt_scaling.sched.trainable import ebt_trial

    t_init = time.monotonic()
    out.import_s = t_init - t_imp
    init_kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                                   configure_logging=True)
    if local:
        init_kw.update(address="local", _temp_dir=os.path.join(temp_dir, "r"))
        if opts.num_cpus is not None:
            init_kw["num_cpus"] = opts.num_cpus
        if opts.num_gpus is not None:
            init_kw["num_gpus"] = opts.num_gpus
    else:
        init_kw["address"] = address
        init_kw.pop("include_dashboard")
    procs = LocalRayProcesses() if local else None  # before ray.init: its processes are found by parentage
    try:
        raise_lost_interrupt()
        ray.init(**init_kw)
    except KeyboardInterrupt:  # Ctrl-C during Ray's start-up: stop what did start, then report the interrupt
        progress.stop()
        stop_ray(ray, procs, temp_dir)
        raise
    except Exception as exc:
        progress.stop()
        stop_ray(ray, procs, temp_dir)
        from ebt_scaling.errors import ConfigError

        first = (str(exc).strip().splitlines() or [""])[0][:300]
        where = "a local Ray instance" if local else f"the Ray cluster at {address}"
        raise ConfigError(f"ray: cannot start or reach {where} ({type(exc).__name__}: {first}); check --address/"
                          "RAY_ADDRESS (leave both unset for a local instance)") from None
    try:
        out.ray_init_s = time.monotonic() - t_init
        if procs is not None:
            procs.started()
        callback = SweepCallback(sink, tasks, flush_s=opts.flush_s, progress=progress)
        from ebt_scaling.sched.stopper import CancelStopper

        stopper = CancelStopper(sink)
        cluster = ray.cluster_resources()
        need_cpu, need_gpu = trial_footprint(opts)
        if need_cpu > cluster.get("CPU", 0) + 1e-9 or need_gpu > cluster.get("GPU", 0) + 1e-9:
            from ebt_scaling.errors import ConfigError

            raise ConfigError(f"resources: a trial asks for {need_cpu:g} CPU and {need_gpu:g} GPU but the Ray "
                              f"cluster has {cluster.get('CPU', 0):g} CPU and {cluster.get('GPU', 0):g} GPU; "
                              "lower --cpus-per-trial/--gpus-per-trial/--workers-per-trial or use a bigger cluster")
        workers_note = f" ({opts.workers_per_trial} workers on Ray Train)" if opts.workers_per_trial > 1 else ""
        progress.message(f"Ray: {'local instance' if local else 'cluster ' + str(address)} with "
                         f"{cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU; "
                         f"{len(tasks)} trial(s), {need_cpu:g} CPU + {need_gpu:g} GPU each{workers_note}")
        storage = str(Path(opts.storage_path).expanduser().resolve()) if "://" not in opts.storage_path \
            else opts.storage_path
        for t in tasks:
            t.setdefault("report_every_s", opts.report_every_s)
            if opts.train_fn:
                t.setdefault("train_fn", opts.train_fn)
            if opts.workers_per_trial > 1:
                t.update(workers=opts.workers_per_trial, cpus_per_worker=opts.cpus_per_trial,
                         gpus_per_worker=opts.gpus_per_trial, storage=storage, experiment=opts.experiment_name)
        max_concurrent = opts.max_concurrent
        if opts.workers_per_trial > 1:
            # The trials hold no resources of their own; as many at once as the cluster holds worker groups
            # (more would start Train drivers whose placement groups wait, and can deadlock each other).
            fit = [cluster.get("CPU", 0) / need_cpu if need_cpu else float("inf"),
                   cluster.get("GPU", 0) / need_gpu if need_gpu else float("inf")]
            cap = max(1, int(min(fit) + 1e-9)) if min(fit) != float("inf") else 1
            max_concurrent = min(cap, max_concurrent) if max_concurrent else cap
        trainable = tune.with_resources(ebt_trial, _task_resources(opts))
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search(tasks)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent,
                # A data-parallel trial's Train controller and workers are owned by the trial's actor: a stopped
                # trial must take its actor (and so them) down, not hand it to the next trial.
                reuse_actors=opts.reuse_actors and opts.workers_per_trial == 1,
                trial_name_creator=lambda t: f"r{t.config['run']['run_id']}",
                trial_dirname_creator=lambda t: f"r{t.config['run']['run_id']}",
            ),
            run_config=tune.RunConfig(
                name=opts.experiment_name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=opts.max_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[callback, *tracker_callbacks(opts.trackers, progress_name, storage, opts.tracking)],
                stop=stopper,
                verbose=0,
                log_to_file=False,
            ),
        )
        t_fit = time.monotonic()
        try:
            raise_lost_interrupt()  # Tune's own handler takes a Ctrl-C from here on
            tuner.fit()
        except KeyboardInterrupt:
            out.interrupted = True
        out.fit_s = time.monotonic() - t_fit
        callback.flush()
        # Tune stops on the first Ctrl-C and returns; whatever has not finished was cancelled.
        for rs in callback.runs.values():
            if rs.finished:
                out.finished[rs.run_id] = str(rs.result.get("status"))
            else:
                out.cancelled.append(rs.run_id)
        if out.cancelled:
            out.interrupted = True
            why = ("cancelled with `ebt-scale cancel` before the run finished" if stopper.fired
                   else "sweep interrupted before the run finished")
            for rid in out.cancelled:
                sink.finished(rid, "cancelled", why, {})
        out.cancel_requested = stopper.fired
    finally:
        t_down = time.monotonic()
        try:
            progress.stop()
        finally:
            stop_ray(ray, procs, temp_dir)
            out.shutdown_s = time.monotonic() - t_down
    out.wall_s = time.monotonic() - t0
    return out
