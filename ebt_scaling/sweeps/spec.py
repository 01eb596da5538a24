"""Sweep specifications: TOML files in ``experiments/`` (stdlib only, never torch or ray).

A spec names one axis, the families, seeds and EBT recipe, the base model/train/data settings and the
axis values. Layout (every section but ``[sweep]`` and ``[axis]`` is optional)::

    [sweep]
    name = "depth-tiny"            # default sweep name (--name overrides)
    axis = "depth"                 # data | batch | depth | width | params | flops
    families = ["ebt", "transformer_pp"]
    seeds = [33]                   # --seeds N takes N consecutive seeds from the first one
    recipe = "ebt_s1"              # EBT recipe (ebt_s1 | ebt_s2); Transformer++ runs ignore it
    description = "..."

    [model]                        # base shape: a size preset plus ModelConfig field overrides
    preset = "xxs"
    sequence_len = 256

    [train]                        # TrainConfig fields (unset: the preset's, config.PRESETS)
    [train.ebt]                    # optional: one family's own optimizer settings (FAMILY_TRAIN_KEYS), e.g.
    lr = 0.02                      # each family at its own tuned peak LR; the data, batch and steps stay shared
    [data]                         # DataConfig fields (vocab_size: the tokenizer's, also the model's)
    [resources]                    # gpus_per_trial, cpus_per_trial, workers_per_trial, max_concurrent,
                                   # max_retries
    [cost]                         # throughput assumptions of the dry-run plan: gpu_flops_per_s, cpu_flops_per_s,
                                   # scaling_efficiency (multi-worker trials), note
    [tracking]                     # trackers = ["mlflow", "tensorboard", "wandb"], mlflow_tracking_uri,
                                   # wandb_project (sched/trackers.py)

    [axis]
    values = [4, 8, 12, 16]        # axis-specific keys: see AXIS_KEYS

Every problem raises ``SpecError`` with one line naming the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebt_scaling.config import (
    AXES,
    FAMILIES,
    FAMILY_TRAIN_KEYS,
    PRESETS,
    RECIPES,
    TRACKERS,
    DataConfig,
    ModelConfig,
    TrainConfig,
)
from ebt_scaling.errors import SpecError
from ebt_scaling.names import name_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SECTIONS = ("sweep", "model", "train", "data", "resources", "cost", "tracking", "axis")
SWEEP_KEYS = ("name", "axis", "families", "seeds", "recipe", "description")
MODEL_KEYS = ("preset",) + tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("family",)
)
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig))
RESOURCE_KEYS = ("gpus_per_trial", "cpus_per_trial", "workers_per_trial", "max_concurrent", "max_retries")
RESOURCE_LIMITS = {"gpus_per_trial": 1024, "cpus_per_trial": 4096, "workers_per_trial": 4096, "max_concurrent": 100_000,
                   "max_retries": 1000}
COST_KEYS = ("gpu_flops_per_s", "cpu_flops_per_s", "scaling_efficiency", "note")
TRACKING_KEYS = ("trackers", "mlflow_tracking_uri", "wandb_project")

# Axis-specific keys of [axis]. Every axis has ``values``.
AXIS_KEYS: dict[str, tuple[str, ...]] = {
    # values = training tokens per run. mode "separate" (default): one run per budget, steps and cosine
    # schedule matched to the budget; "evaluations": one long run evaluated at every budget (the paper).
    "data": ("values", "mode"),
    # values = batch sizes in sequences (x = tokens per batch). mode "fixed_steps" (paper, [train] steps)
    # or "fixed_tokens" (steps = total_tokens / tokens per batch).
    "batch": ("values", "mode", "total_tokens"),
    # values = number of blocks at the base width.
    "depth": ("values",),
    # values = embedding sizes at the base depth; heads = width / head_size.
    "width": ("values", "head_size"),
    # values = size presets (batch sizes and peak LRs default to each preset's, paper Table D.1) or custom
    # shapes { name = "s", n_layer = 2, n_embd = 64, n_head = 2 } (batch size and LR from [train]).
    "params": ("values", "batch_sizes", "lrs"),
    # the params runs, x = training FLOPs under a named convention (paper | exact).
    "flops": ("values", "batch_sizes", "lrs", "convention"),
}
AXIS_MODES = {"data": ("separate", "evaluations"), "batch": ("fixed_steps", "fixed_tokens")}
CONVENTIONS = ("paper", "exact")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep specification."""

    name: str
    axis: str
    families: tuple[str, ...]
    seeds: tuple[int, ...]
    recipe: str
    values: tuple[Any, ...]
    preset: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    family_train: dict[str, dict[str, Any]] = field(default_factory=dict)  # [train.<family>]: overrides of train
    data: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)
    micro_batch_auto: bool = False  # [train] micro_batch_size = "auto": the memory plan picks it per run
    mode: str | None = None
    total_tokens: int | None = None
    head_size: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    lrs: tuple[float, ...] | None = None
    convention: str = "paper"
    description: str = ""
    source: str = "<spec>"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored with the sweep in the database)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def with_(self, **changes: Any) -> SweepSpec:
        return dataclasses.replace(self, **changes)

    def select(self, *, families: list[str] | None = None, seeds: int | None = None,
               name: str | None = None, recipe: str | None = None) -> SweepSpec:
        """Apply the CLI's --families / --seeds / --name / --recipe to the spec (validated)."""
        src = "command line"
        out = self
        if families is not None:
            fams = tuple(dict.fromkeys(f.strip() for f in families if f.strip()))
            for f in fams:
                if f not in FAMILIES:
                    raise SpecError(f"{src}: --families: unknown family {f!r}; use a comma list of "
                                    f"{', '.join(FAMILIES)}")
            if not fams:
                raise SpecError(f"{src}: --families is empty; use e.g. --families ebt,transformer_pp")
            out = out.with_(families=fams)
        if seeds is not None:
            if seeds < 1:
                raise SpecError(f"{src}: --seeds must be >= 1, got {seeds}; use e.g. --seeds 3")
            first = self.seeds[0]
            out = out.with_(seeds=tuple(range(first, first + seeds)))
        if recipe is not None:
            if recipe not in RECIPES:
                raise SpecError(f"{src}: --recipe: unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}")
            out = out.with_(recipe=recipe)
        if name is not None:
            if not name.strip():
                raise SpecError(f"{src}: --name is empty; give a sweep name such as depth-tiny")
            if (why := name_problem(name.strip())) is not None:
                raise SpecError(f"{src}: --name {why}; give a sweep name such as depth-tiny")
            out = out.with_(name=name.strip())
        return out


LOCAL_SOURCE_PREFIXES = ("store:", "text:")


def absolute_source(source: str) -> str:
    """``store:DIR`` / ``text:PATH`` with a relative path made absolute from the current directory (where
    ``ebt-scale sweep`` runs). Ray trials run in other directories, so a run's config, and its hash, hold the
    absolute path; ``~`` is expanded too. A path written absolute is kept as written (its runs keep their hashes)."""
    prefix, _, path = source.partition(":")
    if not path or Path(path).is_absolute():
        return source
    return f"{prefix}:{Path(path).expanduser().absolute()}"


def _err(source: str, key: str, problem: str, fix: str) -> SpecError:
    return SpecError(f"{source}: {key}: {problem}; {fix}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML sweep spec."""
    p = Path(path)
    src = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{src}: file not found; pass an existing TOML file to --spec "
                        "or use --axis with --preset") from None
    except OSError as exc:
        raise SpecError(f"{src}: cannot read the file ({exc.strerror}); check its permissions") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{src}: not UTF-8 (byte {exc.start}); TOML files must be UTF-8: convert it, e.g. "
                        "iconv -f latin1 -t utf-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{src}: invalid TOML ({exc}); fix the syntax at that line") from None
    return parse_spec(raw, source=src)


def parse_spec(raw: dict[str, Any], *, source: str = "<spec>") -> SweepSpec:
    """Validate a parsed TOML document into a SweepSpec."""
    src = source
    for sec in raw:
        if sec not in SECTIONS:
            raise _err(src, sec, "unknown section", f"use only [{'], ['.join(SECTIONS)}]")
        if not isinstance(raw[sec], dict):
            raise _err(src, sec, "must be a table", f"write it as a [{sec}] section")
    for sec in ("sweep", "axis"):
        if sec not in raw:
            raise _err(src, f"[{sec}]", "section missing", f"add a [{sec}] section")

    def check_keys(sec: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        d = dict(raw.get(sec, {}))
        for k in d:
            if k not in allowed:
                raise _err(src, f"{sec}.{k}", "unknown key", f"valid keys are {', '.join(allowed)}")
        return d

    sw = check_keys("sweep", SWEEP_KEYS)
    axis = sw.get("axis")
    if axis not in AXES:
        raise _err(src, "sweep.axis", f"unknown axis {axis!r}", f"use one of {', '.join(AXES)}")
    name = sw.get("name", f"{axis}")
    if (why := name_problem(name)) is not None:
        raise _err(src, "sweep.name", why, 'e.g. name = "depth-tiny"')
    families = sw.get("families", list(FAMILIES))
    if not isinstance(families, list) or not families or any(f not in FAMILIES for f in families):
        raise _err(src, "sweep.families", f"bad value {families!r}",
                   f"use a non-empty list drawn from {', '.join(FAMILIES)}")
    seeds = sw.get("seeds", [0])
    if _is_int(seeds):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise _err(src, "sweep.seeds", f"bad value {seeds!r}", "use a list of non-negative integers, e.g. [33]")
    if len(set(seeds)) != len(seeds):
        raise _err(src, "sweep.seeds", "duplicate seeds", "list each seed once")
    recipe = sw.get("recipe", "ebt_s1")
    if recipe not in RECIPES:
        raise _err(src, "sweep.recipe", f"unknown recipe {recipe!r}", f"use one of {', '.join(RECIPES)}")
    description = sw.get("description", "")
    if not isinstance(description, str):
        raise _err(src, "sweep.description", "must be a string", "write it in quotes")

    model = check_keys("model", MODEL_KEYS)
    if "vocab_size" in model:
        raise _err(src, "model.vocab_size", "the vocabulary size is decided once, by the tokenizer",
                   "drop it and set [data] vocab_size to the tokenizer's size (ignored for tokenizer = \"byte\")")
    preset = model.pop("preset", "tiny")
    if preset not in PRESETS:
        raise _err(src, "model.preset", f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    train = check_keys("train", TRAIN_KEYS + FAMILIES)
    family_train: dict[str, dict[str, Any]] = {}
    for fam in FAMILIES:
        if fam not in train:
            continue
        sub = train.pop(fam)
        if not isinstance(sub, dict):
            raise _err(src, f"train.{fam}", "must be a table", f"write it as a [train.{fam}] section")
        for k, v in sub.items():
            if k not in FAMILY_TRAIN_KEYS:
                raise _err(src, f"train.{fam}.{k}", "not a per-family setting",
                           f"a family's own table takes only {', '.join(FAMILY_TRAIN_KEYS)}; set {k} in [train] "
                           "(shared, so both families see the same data)")
            if not (_is_int(v) and v >= 0 if k == "warmup_steps" else _is_num(v)):
                raise _err(src, f"train.{fam}.{k}", f"bad value {v!r}",
                           "use a non-negative integer" if k == "warmup_steps" else "use a number")
        if "lr" in sub and axis in ("params", "flops"):
            raise _err(src, f"train.{fam}.lr", f"the {axis} axis gives every level its own peak LR (axis.lrs or the "
                       "size presets')", f"drop it, or run the {fam} family in its own sweep with its own axis.lrs")
        family_train[fam] = sub
    micro_auto = train.get("micro_batch_size") == "auto"
    if micro_auto:  # resolved per run by the memory plan (cli/sweep.py); the runs are expanded with the whole batch
        del train["micro_batch_size"]
    data = check_keys("data", DATA_KEYS)
    source = data.get("source")
    if isinstance(source, str) and source.startswith(LOCAL_SOURCE_PREFIXES):
        data["source"] = absolute_source(source)
    resources = check_keys("resources", RESOURCE_KEYS)
    for k, v in resources.items():
        ok = _is_num(v) and v >= 0 if k in ("gpus_per_trial", "cpus_per_trial") else _is_int(v) and v >= 0
        if not ok:
            raise _err(src, f"resources.{k}", f"bad value {v!r}", "use a non-negative number")
        if k == "workers_per_trial" and v < 1:
            raise _err(src, f"resources.{k}", f"bad value {v!r}", "use 1 (one process) or more data-parallel workers")
        if v > RESOURCE_LIMITS[k]:
            raise _err(src, f"resources.{k}", f"{v!r} is above the limit {RESOURCE_LIMITS[k]:,}",
                       "check for a typo")
    cost = check_keys("cost", COST_KEYS)
    for k in ("gpu_flops_per_s", "cpu_flops_per_s"):
        if k in cost and not (_is_num(cost[k]) and cost[k] > 0):
            raise _err(src, f"cost.{k}", f"bad value {cost[k]!r}", "use a positive number of FLOP/s, e.g. 6e13")
    if "scaling_efficiency" in cost and not (_is_num(cost["scaling_efficiency"])
                                             and 0 < cost["scaling_efficiency"] <= 1):
        raise _err(src, "cost.scaling_efficiency", f"bad value {cost['scaling_efficiency']!r}",
                   "use the measured or stated share of linear multi-worker speed-up, in (0, 1]; 1.0 for one worker")

    tracking = check_keys("tracking", TRACKING_KEYS)
    trackers = tracking.get("trackers", [])
    if not isinstance(trackers, list) or any(t not in TRACKERS for t in trackers):
        raise _err(src, "tracking.trackers", f"bad value {trackers!r}",
                   f"use a list drawn from {', '.join(TRACKERS)}, e.g. [\"mlflow\"]")
    for k in ("mlflow_tracking_uri", "wandb_project"):
        if k in tracking and not (isinstance(tracking[k], str) and tracking[k].strip()):
            raise _err(src, f"tracking.{k}", "must be a non-empty string", "quote it, or leave it out")

    ax = check_keys("axis", AXIS_KEYS[axis])
    values = ax.get("values")
    if not isinstance(values, list) or not values:
        raise _err(src, "axis.values", "missing or empty", f"list the {axis} values to sweep")
    if len(set(map(str, values))) != len(values):
        raise _err(src, "axis.values", "duplicate values", "list each value once")
    mode = ax.get("mode")
    if axis in AXIS_MODES:
        mode = mode or AXIS_MODES[axis][0]
        if mode not in AXIS_MODES[axis]:
            raise _err(src, "axis.mode", f"unknown mode {mode!r}", f"use one of {', '.join(AXIS_MODES[axis])}")
    if axis in ("params", "flops"):
        for v in values:
            if isinstance(v, dict):
                extra = sorted(set(v) - {"name", "n_layer", "n_embd", "n_head"})
                if extra or not all(_is_int(v.get(k)) and v[k] >= 1 for k in ("n_layer", "n_embd", "n_head")):
                    raise _err(src, "axis.values", f"bad shape {v!r}",
                               "write a custom size as { name = \"s\", n_layer = 2, n_embd = 64, n_head = 2 }")
            elif v not in PRESETS:
                raise _err(src, "axis.values", f"unknown preset {v!r}",
                           f"the {axis} axis takes size presets ({', '.join(PRESETS)}) or "
                           "{ n_layer, n_embd, n_head } tables")
    else:
        for v in values:
            if not (_is_int(v) and v >= 1):
                raise _err(src, "axis.values", f"bad value {v!r}", f"the {axis} axis takes positive integers")
    total_tokens = ax.get("total_tokens")
    if axis == "batch" and mode == "fixed_tokens":
        if not (_is_int(total_tokens) and total_tokens > 0):
            raise _err(src, "axis.total_tokens", "required for mode = \"fixed_tokens\"",
                       "set the training tokens every batch size gets, e.g. 1_000_000")
    head_size = ax.get("head_size")
    if axis == "width":
        if not (_is_int(head_size) and head_size >= 2 and head_size % 2 == 0):
            raise _err(src, "axis.head_size", f"bad value {head_size!r}",
                       "set an even head size (the paper's presets use 64)")
        for v in values:
            if v % head_size:
                raise _err(src, "axis.values", f"width {v} is not a multiple of head_size {head_size}",
                           "use widths that are multiples of the head size")
    batch_sizes = ax.get("batch_sizes")
    lrs = ax.get("lrs")
    for key, lst, check in (("batch_sizes", batch_sizes, lambda x: _is_int(x) and x >= 1),
                            ("lrs", lrs, lambda x: _is_num(x) and x > 0)):
        if lst is None:
            continue
        if not isinstance(lst, list) or len(lst) != len(values) or not all(check(x) for x in lst):
            raise _err(src, f"axis.{key}", f"bad value {lst!r}",
                       f"give one positive number per value ({len(values)}), or leave it out for the presets'")
    convention = ax.get("convention", "paper")
    if convention not in CONVENTIONS:
        raise _err(src, "axis.convention", f"unknown FLOPs convention {convention!r}",
                   f"use one of {', '.join(CONVENTIONS)}")

    spec = SweepSpec(
        name=name.strip(), axis=axis, families=tuple(families), seeds=tuple(seeds), recipe=recipe,
        values=tuple(values), preset=preset, model=model, train=train, family_train=family_train, data=data,
        resources=resources,
        cost=cost, tracking=tracking, micro_batch_auto=micro_auto, mode=mode, total_tokens=total_tokens,
        head_size=head_size,
        batch_sizes=tuple(batch_sizes) if batch_sizes else None, lrs=tuple(lrs) if lrs else None,
        convention=convention, description=description, source=src,
    )
    # Build every run once so that a bad model/train/data value is reported now, with the file named.
    from ebt_scaling.sweeps.expand import expand

    expand(spec)
    return spec
