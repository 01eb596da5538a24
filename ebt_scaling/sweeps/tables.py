"""A sweep spec's tables, declared once and checked by the config validator (``config.config_class``), and the
validated ``SweepSpec`` they make. ``[model]``, ``[train]`` and ``[data]`` are field overrides of ``ModelConfig``,
``TrainConfig`` and ``DataConfig``: their keys are checked here, their values by those classes when the runs are
built (``sweeps/expand.py``; ``sweeps/spec.py`` does both while loading a file).

Every problem is one line ``section.key: problem; fix`` (``ConfigError``; the loader prefixes the file).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal
from typing import get_args as typing_args

from pydantic import Field, field_validator, model_validator

from ebt_scaling.config import (
    FAMILIES,
    FAMILY_TRAIN_KEYS,
    MAX_SEED,
    PRESETS,
    RECIPES,
    STORE_PREFIX,
    VIDEO_RECIPE_OVERRIDES,
    Axis,
    DataConfig,
    Family,
    ModelConfig,
    Number,
    Tracker,
    TrainConfig,
    config_class,
    did_you_mean,
    is_synthetic_video,
    setting,
    unknown_key_line,
)
from ebt_scaling.errors import ConfigError, SpecError
from ebt_scaling.names import name_problem

SECTIONS = ("sweep", "model", "train", "data", "resources", "cost", "tracking", "tune", "axis")
# [tune] (issue 28): grids of the per-family optimizer settings, and lr_scale (multipliers of each level's own LR)
TUNE_GRID_KEYS = FAMILY_TRAIN_KEYS + ("lr_scale",)
# [model]: a size preset plus ModelConfig fields (the family comes from [sweep], the vocabulary from the tokenizer)
MODEL_KEYS = ("preset",) + tuple(f.name for f in fields(ModelConfig) if f.name != "family")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))
DATA_KEYS = tuple(f.name for f in fields(DataConfig) if f.name != "store_fingerprint")  # filled in by expand
DEFAULT_SPEC_PRESET = "tiny"

PositiveInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
PositiveNumber = Annotated[Number, Field(gt=0)]

# A sweep's EBT recipe: a text recipe (config.RECIPE_OVERRIDES) or, for a video sweep, a video one
# (config.VIDEO_RECIPE_OVERRIDES). The default is the modality's S1 recipe.
SweepRecipe = Literal["ebt_s1", "ebt_s2", "ebt_vid_s1", "ebt_vid_s2"]
VIDEO_RECIPES: tuple[str, ...] = tuple(VIDEO_RECIPE_OVERRIDES)
assert set(typing_args(SweepRecipe)) == set(RECIPES) | set(VIDEO_RECIPES)
Modality = Literal["text", "video"]
# Axes a video sweep takes (issue 31): the isoflop axis's ladder and budgets are planned with the text FLOPs.
VIDEO_AXES = ("data", "batch", "depth", "width", "params", "flops")
# [data] keys that mean nothing for video clips (no tokenizer, no vocabulary, no documents).
TEXT_ONLY_DATA_KEYS = ("tokenizer", "vocab_size", "sampling")


@config_class(name="sweep")
class SweepTable:
    """``[sweep]``: what is swept and for whom."""

    axis: Axis = setting(help="The swept axis.", noun="axis")
    name: str | None = setting(default=None, help="Default sweep name (--name overrides); default: the axis.")
    families: list[Family] = setting(default_factory=lambda: list(FAMILIES), min_length=1, noun="family",
                                     help="The model families.",
                                     fix=f"use a non-empty list drawn from {', '.join(FAMILIES)}")
    seeds: list[Seed] = setting(default_factory=lambda: [0], min_length=1, help="Seeds (--seeds N takes N "
                                "consecutive seeds from the first one).",
                                fix="use a list of non-negative integers, e.g. [33]")
    recipe: SweepRecipe | None = setting(default=None, help="EBT recipe; Transformer++ runs ignore it (default: "
                                         "ebt_s1, or ebt_vid_s1 for a video sweep).", noun="recipe")
    modality: Modality | None = setting(default=None, help="text or video: a checked declaration; the modality "
                                        "itself is [model] frame_dim's (set: video).", noun="modality")
    description: str = setting(default="", help="Free text.")

    @field_validator("seeds", mode="before")
    @classmethod
    def _one_seed(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (why := name_problem(v)) is not None:
            raise ConfigError(f"sweep.name: {why}; e.g. name = \"depth-tiny\"")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> SweepTable:
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("sweep.seeds: duplicate seeds; list each seed once")
        return self


@config_class(name="resources")
class ResourcesTable:
    """``[resources]``: per trial (command-line options win)."""

    gpus_per_trial: Number | None = setting(default=None, help="GPUs per trial (fractions allowed).", ge=0, le=1024)
    cpus_per_trial: Number | None = setting(default=None, help="CPUs per trial.", ge=0, le=4096)
    workers_per_trial: int | None = setting(default=None, help="Data-parallel workers per trial.", ge=1, le=4096,
                                            fix="use 1 (one process) or more data-parallel workers")
    max_concurrent: int | None = setting(default=None, help="At most K trials at once.", ge=0, le=100_000)
    max_retries: int | None = setting(default=None, help="Retries of a failed trial.", ge=0, le=1000)


@config_class(name="cost")
class CostTable:
    """``[cost]``: throughput assumptions of the dry-run plan."""

    gpu_flops_per_s: Number | None = setting(default=None, help="FLOP/s per GPU.", gt=0,
                                             fix="use a positive number of FLOP/s, e.g. 6e13")
    cpu_flops_per_s: Number | None = setting(default=None, help="FLOP/s per CPU core.", gt=0,
                                             fix="use a positive number of FLOP/s, e.g. 6e13")
    scaling_efficiency: Number | None = setting(default=None, help="Share of linear multi-worker speed-up.", gt=0, le=1,
                                                fix="use the measured or stated share of linear multi-worker "
                                                "speed-up, in (0, 1]; 1.0 for one worker")
    note: str | None = setting(default=None, help="Where the numbers come from.")


@config_class(name="tracking")
class TrackingTable:
    """``[tracking]``: experiment trackers (sched/trackers.py)."""

    trackers: list[Tracker] = setting(default_factory=list, help="Trackers to log to.", noun="tracker")
    mlflow_tracking_uri: str | None = setting(default=None, help="MLflow tracking URI.", pattern=r"\S",
                                              fix="give a non-empty string, or leave it out")
    wandb_project: str | None = setting(default=None, help="Weights & Biases project.", pattern=r"\S",
                                        fix="give a non-empty string, or leave it out")


# ---- [axis], one table per axis. Every axis has ``values``.
def _distinct_values(values: list[Any]) -> None:
    if len(set(map(str, values))) != len(values):
        raise ConfigError("axis.values: duplicate values; list each value once")


@config_class(name="axis")
class DepthAxis:
    """values = number of blocks at the base width."""

    values: list[PositiveInt] = setting(help="Depths.", min_length=1,
                                        fix="the depth axis takes positive integers; list the depths to sweep")

    @model_validator(mode="after")
    def _check(self) -> DepthAxis:
        _distinct_values(self.values)
        return self


@config_class(name="axis")
class WidthAxis:
    """values = embedding sizes at the base depth; heads = width / head_size."""

    values: list[PositiveInt] = setting(help="Widths.", min_length=1,
                                        fix="the width axis takes positive integers; list the widths to sweep")
    head_size: int = setting(help="Head size (even, for RoPE).", ge=2, le=65536,
                             fix="set an even head size (the paper's presets use 64)")

    @model_validator(mode="after")
    def _check(self) -> WidthAxis:
        _distinct_values(self.values)
        if self.head_size % 2:
            raise ConfigError(f"axis.head_size: {self.head_size} is odd; set an even head size (the paper's "
                              "presets use 64)")
        for v in self.values:
            if v % self.head_size:
                raise ConfigError(f"axis.values: width {v} is not a multiple of head_size {self.head_size}; use "
                                  "widths that are multiples of the head size")
        return self


@config_class(name="axis")
class BatchAxis:
    """values = batch sizes in sequences (x = tokens per batch). mode fixed_steps (paper, [train] steps) or
    fixed_tokens (steps = total_tokens / tokens per batch)."""

    values: list[PositiveInt] = setting(help="Batch sizes.", min_length=1,
                                        fix="the batch axis takes positive integers; list the batch sizes")
    mode: Literal["fixed_steps", "fixed_tokens"] = setting(default="fixed_steps", help="What stays fixed.", noun="mode")
    total_tokens: int | None = setting(default=None, help="Training tokens of every run (mode fixed_tokens).", ge=1,
                                       fix="set the training tokens every batch size gets, e.g. 1_000_000")

    @model_validator(mode="after")
    def _check(self) -> BatchAxis:
        _distinct_values(self.values)
        if self.mode == "fixed_tokens" and self.total_tokens is None:
            raise ConfigError("axis.total_tokens: required for mode = \"fixed_tokens\"; set the training tokens "
                              "every batch size gets, e.g. 1_000_000")
        return self


@config_class(name="axis")
class DataAxis:
    """values = training tokens per run. mode separate (default): one run per budget, steps and cosine schedule
    matched to the budget; evaluations: one long run evaluated at every budget (the paper)."""

    values: list[PositiveInt] = setting(help="Token budgets.", min_length=1,
                                        fix="the data axis takes positive integers; list the token budgets")
    mode: Literal["separate", "evaluations"] = setting(default="separate", help="Runs per budget.", noun="mode")

    @model_validator(mode="after")
    def _check(self) -> DataAxis:
        _distinct_values(self.values)
        return self


SHAPE_KEYS = ("name", "n_layer", "n_embd", "n_head")


@config_class(name="axis")
class ParamsAxis:
    """values = size presets (batch sizes and peak LRs default to each preset's, paper Table D.1) or custom
    shapes { name = "s", n_layer = 2, n_embd = 64, n_head = 2 } (batch size and LR from [train])."""

    values: list[Any] = setting(help="Size presets or custom shapes.", min_length=1,
                                fix="list size presets or { n_layer, n_embd, n_head } tables")
    batch_sizes: list[PositiveInt] | None = setting(default=None, help="One batch size per value.",
                                                    fix="give one positive number per value")
    lrs: list[PositiveNumber] | None = setting(default=None, help="One peak LR per value.",
                                               fix="give one positive number per value")

    @model_validator(mode="after")
    def _check(self) -> ParamsAxis:
        _distinct_values(self.values)
        axis = "flops" if isinstance(self, FlopsAxis) else "isoflop" if type(self).__name__ == "IsoflopAxis" \
            else "params"
        for v in self.values:
            if isinstance(v, dict):
                extra = sorted(set(v) - set(SHAPE_KEYS))
                if extra or not all(isinstance(v.get(k), int) and not isinstance(v.get(k), bool) and v[k] >= 1
                                    for k in SHAPE_KEYS[1:]):
                    raise ConfigError(f"axis.values: bad shape {v!r}; write a custom size as "
                                      "{ name = \"s\", n_layer = 2, n_embd = 64, n_head = 2 }")
            elif not isinstance(v, str) or v not in PRESETS:
                raise ConfigError(f"axis.values: unknown preset {v!r}{did_you_mean(str(v), list(PRESETS))}; the "
                                  f"{axis} axis takes size presets ({', '.join(PRESETS)}) or "
                                  "{ n_layer, n_embd, n_head } tables")
        for key in ("batch_sizes", "lrs"):
            lst = getattr(self, key)
            if lst is not None and len(lst) != len(self.values):
                raise ConfigError(f"axis.{key}: {len(lst)} values for {len(self.values)} sizes; give one positive "
                                  f"number per value ({len(self.values)}), or leave it out for the presets'")
        return self


@config_class(name="axis")
class FlopsAxis(ParamsAxis):
    """The params runs, x = training FLOPs under a named convention (paper | exact)."""

    convention: Literal["paper", "exact"] = setting(default="paper", help="FLOPs convention (models/flops.py).",
                                                    noun="FLOPs convention")


@config_class(name="axis")
class IsoflopAxis(ParamsAxis):
    """IsoFLOP profiles (issue 29, ``sweeps/isoflop.py``): values = a ladder of shapes (size presets or custom
    shapes, smallest first); per budget C (FLOPs) and family, ``sizes_per_budget`` consecutive shapes centred on
    the family's predicted optimum, each trained on D = C / F tokens (F: the family's own training FLOPs per
    token in ``convention``)."""

    budgets: list[PositiveNumber] = setting(help="Compute budgets in training FLOPs.", min_length=1,
                                            fix="list the budgets in FLOPs, e.g. [1e11, 2e11, 4e11]")
    sizes_per_budget: int = setting(default=5, help="Shapes per (budget, family).", ge=1, le=1000,
                                    fix="use 5 or more sizes per budget (the fit's guard asks for 5)")
    centre: Literal["predicted", "ladder"] = setting(default="predicted", help="Window centring rule.",
                                                     noun="centring rule")
    tokens_per_param: PositiveNumber = setting(default=20.0, help="D/N of the predicted optimum (Chinchilla: 20).",
                                               fix="use a positive ratio, e.g. 20 (Hoffmann et al. 2022)")
    lr_exponent: Number = setting(default=0.0, help="Custom shapes: lr = [train] lr x (N / N_first)^-lr_exponent.",
                                  ge=0, le=2, fix="use 0 (one LR) or e.g. 0.333 (lr ~ 1/width, muP)")
    tolerance: PositiveNumber = setting(default=0.02, help="Largest |realised C / budget - 1| kept.", le=0.5,
                                        fix="use a small share, e.g. 0.02")
    convention: Literal["paper", "exact"] = setting(default="exact", help="FLOPs convention of the budgets.",
                                                    noun="FLOPs convention")

    @model_validator(mode="after")
    def _budgets(self) -> IsoflopAxis:
        if len(set(self.budgets)) != len(self.budgets):
            raise ConfigError("axis.budgets: duplicate budgets; list each budget once")
        if self.sizes_per_budget > len(self.values):
            raise ConfigError(f"axis.sizes_per_budget: {self.sizes_per_budget} is more than the ladder's "
                              f"{len(self.values)} shapes; add shapes to axis.values or lower sizes_per_budget")
        return self


AXIS_TABLES: dict[str, type] = {"data": DataAxis, "batch": BatchAxis, "depth": DepthAxis, "width": WidthAxis,
                                "params": ParamsAxis, "flops": FlopsAxis, "isoflop": IsoflopAxis}
AXIS_KEYS: dict[str, tuple[str, ...]] = {a: tuple(f.name for f in fields(t)) for a, t in AXIS_TABLES.items()}


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
    # [tune]: per family, the grid of each tuned key (shared [tune] keys overridden by [tune.<family>]'s); empty:
    # no tuning. Every (family, level, seed) trains every point of the cartesian product (sweeps/expand.py).
    tune: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    micro_batch_auto: bool = False  # [train] micro_batch_size = "auto": the memory plan picks it per run
    mode: str | None = None
    total_tokens: int | None = None
    head_size: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    lrs: tuple[float, ...] | None = None
    convention: str = "paper"
    # axis = "isoflop" (sweeps/isoflop.py): budgets (FLOPs) and the window rule; None/{} on other axes
    budgets: tuple[float, ...] | None = None
    isoflop: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "<spec>"
    # "video" when [model] frame_dim is set (issue 31: next-frame prediction over frame embeddings), else "text"
    modality: str = "text"

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
                    raise SpecError(f"{src}: --families: unknown family {f!r}{did_you_mean(f, FAMILIES)}; use a "
                                    f"comma list of {', '.join(FAMILIES)}")
            if not fams:
                raise SpecError(f"{src}: --families is empty; use e.g. --families ebt,transformer_pp")
            out = out.with_(families=fams)
        if seeds is not None:
            if seeds < 1:
                raise SpecError(f"{src}: --seeds must be >= 1, got {seeds}; use e.g. --seeds 3")
            first = self.seeds[0]
            out = out.with_(seeds=tuple(range(first, first + seeds)))
        if recipe is not None:
            mine = VIDEO_RECIPES if self.modality == "video" else RECIPES
            if recipe not in RECIPES + VIDEO_RECIPES:
                raise SpecError(f"{src}: --recipe: unknown recipe {recipe!r}; use one of {', '.join(mine)}")
            if recipe not in mine:
                raise SpecError(f"{src}: --recipe: {recipe} is a {'video' if recipe in VIDEO_RECIPES else 'text'} "
                                f"recipe and this sweep is {self.modality}; use {' or '.join(mine)}")
            out = out.with_(recipe=recipe)
        if name is not None:
            if not name.strip():
                raise SpecError(f"{src}: --name is empty; give a sweep name such as depth-tiny")
            if (why := name_problem(name.strip())) is not None:
                raise SpecError(f"{src}: --name {why}; give a sweep name such as depth-tiny")
            out = out.with_(name=name.strip())
        return out


LOCAL_SOURCE_PREFIXES = ("store:", "text:")


def read_manifest(source: str) -> dict[str, Any] | None:
    """The ``manifest.json`` of a ``store:DIR`` source when this machine can read it (None for other sources, and
    for a store it cannot read: a cluster's path, checked on its nodes)."""
    if not source.startswith(STORE_PREFIX):
        return None
    try:
        manifest = json.loads((Path(source[len(STORE_PREFIX):]).expanduser() / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def source_modality(source: str) -> str | None:
    """"video" for ``synthetic-video[:N]`` and a video store, "text" for a text source or token store, None for a
    store this machine cannot read (its kind is checked where it is opened)."""
    if is_synthetic_video(source):
        return "video"
    if not source.startswith(STORE_PREFIX):
        return "text"
    m = read_manifest(source)
    return None if m is None else "video" if m.get("kind") == "video" else "text"


def check_modality(sw: SweepTable, model: dict[str, Any], data: dict[str, Any]) -> tuple[str, str]:
    """The sweep's (modality, recipe): video when ``[model] frame_dim`` is set (the one source of truth), with
    ``[sweep] modality``, the data source, the recipe, the axis and the text-only data keys checked against it.
    Each mismatch is one line naming the key and the fix."""
    frame_dim = model.get("frame_dim")
    modality = "video" if frame_dim is not None else "text"
    if sw.modality == "video" and modality == "text":
        raise ConfigError("sweep.modality: \"video\" needs [model] frame_dim (the frame-embedding size: 32 for "
                          "synthetic-video, a video store's own); add frame_dim = N to [model]")
    if sw.modality == "text" and modality == "video":
        raise ConfigError(f"sweep.modality: \"text\" but [model] frame_dim = {frame_dim} makes a video model; set "
                          "modality = \"video\" or drop frame_dim")
    source = data.get("source", "shakespeare")
    src_kind = source_modality(source) if isinstance(source, str) else None
    if modality == "video" and src_kind == "text":
        raise ConfigError(f"data.source: {source!r} is a text source but the sweep is video ([model] frame_dim = "
                          f"{frame_dim}); use source = \"synthetic-video\" or \"store:DIR\" of a video store "
                          "(ebt-scale data prepare --modality video), or drop frame_dim for a text sweep")
    if modality == "text" and src_kind == "video":
        raise ConfigError(f"data.source: {source!r} holds video clips but the sweep is text; set [model] frame_dim "
                          "(32 for synthetic-video, a video store's own) and [sweep] modality = \"video\", or use a "
                          "text source")
    if modality == "video" and isinstance(source, str) and (m := read_manifest(source)) is not None:
        have = (m.get("params") or {}).get("frame_dim")
        if have is not None and have != frame_dim:
            raise ConfigError(f"model.frame_dim: {frame_dim} differs from the video store's frame_dim {have} "
                              f"({source[len(STORE_PREFIX):]}); set frame_dim = {have}")
    recipe = sw.recipe or ("ebt_vid_s1" if modality == "video" else "ebt_s1")
    mine = VIDEO_RECIPES if modality == "video" else RECIPES
    if recipe not in mine:
        raise ConfigError(f"sweep.recipe: {recipe} is a {'video' if recipe in VIDEO_RECIPES else 'text'} recipe and "
                          f"this sweep is {modality}; use {' or '.join(mine)}")
    if modality == "video":
        if sw.axis not in VIDEO_AXES:
            raise ConfigError(f"sweep.axis: the {sw.axis} axis is not implemented for video (its shape ladder and "
                              f"budgets are planned with the text FLOPs); use one of {', '.join(VIDEO_AXES)}")
        for k in TEXT_ONLY_DATA_KEYS:
            if k in data:
                raise ConfigError(f"data.{k}: a video sweep has no tokenizer, vocabulary or documents (clips are cut "
                                  "into windows of consecutive frames); drop it")
    return modality, recipe


def absolute_source(source: str) -> str:
    """``store:DIR`` / ``text:PATH`` with a relative path made absolute from the current directory (where
    ``ebt-scale sweep`` runs). Ray trials run in other directories, so a run's config, and its hash, hold the
    absolute path; ``~`` is expanded too. A path written absolute is kept as written (its runs keep their hashes)."""
    prefix, _, path = source.partition(":")
    if not path or Path(path).is_absolute():
        return source
    return f"{prefix}:{Path(path).expanduser().absolute()}"


def _keys(section: str, table: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    for k in table:
        if k not in allowed:
            raise ConfigError(unknown_key_line(section, k, allowed))
    return dict(table)


def _given(table_cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` with ``table_cls`` and keep the keys that were given (their validated values)."""
    checked = table_cls(**raw)
    return {k: getattr(checked, k) for k in raw}


def _grid(where: str, key: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{key}: must be a non-empty list of values, got {values!r}; write it as "
                          f"{key} = [a, b, ...]")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{where}.{key}: {v!r} is not a number; list numbers, e.g. {key} = [0.5, 1, 2]"
                              if key == "lr_scale" else f"{where}.{key}: {v!r} is not a number; write it without "
                              "quotes")
        if key == "lr_scale" and not (v > 0 and v == v and v != float("inf")):
            raise ConfigError(f"{where}.lr_scale: {v!r} is not a positive multiplier; use e.g. [0.5, 1, 2]")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}.{key}: duplicate values; list each value once")
    return list(values)


def check_tune(raw: dict[str, Any], axis: str, values: list[Any], axis_lrs: bool,
               families: list[str]) -> dict[str, dict[str, list[Any]]]:
    """``[tune]``'s grids per family (shared keys, then ``[tune.<family>]``'s), checked: lists of distinct numbers,
    ``lr`` or ``lr_scale`` (not both), and no ``lr`` grid on an axis whose levels carry their own LR."""
    shared: dict[str, list[Any]] = {}
    own: dict[str, dict[str, list[Any]]] = {}
    for k, v in raw.items():
        if k in FAMILIES:
            if not isinstance(v, dict):
                raise ConfigError(f"tune.{k}: must be a table; write it as a [tune.{k}] section")
            for kk, vv in v.items():
                if kk not in TUNE_GRID_KEYS:
                    raise ConfigError(unknown_key_line(f"tune.{k}", kk, TUNE_GRID_KEYS))
                own.setdefault(k, {})[kk] = _grid(f"tune.{k}", kk, vv)
        elif k in TUNE_GRID_KEYS:
            shared[k] = _grid("tune", k, v)
        else:
            raise ConfigError(unknown_key_line("tune", k, TUNE_GRID_KEYS + FAMILIES))
    per_level_lr = axis in ("params", "flops", "isoflop") and (axis_lrs or any(not isinstance(v, dict) for v in values))
    out: dict[str, dict[str, list[Any]]] = {}
    for where, table in [("tune", shared)] + [(f"tune.{f}", t) for f, t in own.items()]:
        if "lr" in table and "lr_scale" in table:
            raise ConfigError(f"{where}.lr_scale: given with lr; give absolute LRs (lr) or multipliers of each "
                              "level's LR (lr_scale), not both")
    for fam in families:
        mine = own.get(fam, {})
        # lr and lr_scale are one dimension: a family's own LR grid (either form) replaces the shared one
        base = {k: v for k, v in shared.items() if not ({"lr", "lr_scale"} & set(mine) and k in ("lr", "lr_scale"))}
        grid = {**base, **mine}
        if not grid:
            continue
        if "lr" in grid and per_level_lr:
            lr_where = f"tune.{fam}" if "lr" in own.get(fam, {}) else "tune"
            raise ConfigError(f"{lr_where}.lr: the {axis} axis gives every level its own peak LR (axis.lrs or the size "
                              "presets'); give the grid as multipliers of it instead: lr_scale = [0.5, 1, 2]")
        out[fam] = grid
    return out


def check_tables(raw: dict[str, Any]) -> SweepSpec:
    """A parsed TOML document as a SweepSpec: every table's keys and the values of [sweep], [resources], [cost],
    [tracking] and [axis]. The [model]/[train]/[data] values are checked when the runs are built (expand)."""
    for sec in raw:
        if sec not in SECTIONS:
            raise ConfigError(f"{sec}: unknown section{did_you_mean(sec, SECTIONS)}; use only "
                              f"[{'], ['.join(SECTIONS)}]")
        if not isinstance(raw[sec], dict):
            raise ConfigError(f"{sec}: must be a table; write it as a [{sec}] section")
    for sec in ("sweep", "axis"):
        if sec not in raw:
            raise ConfigError(f"[{sec}]: section missing; add a [{sec}] section")
    sw = SweepTable(**raw["sweep"])
    model = _keys("model", raw.get("model", {}), MODEL_KEYS)
    if "vocab_size" in model:
        raise ConfigError("model.vocab_size: the vocabulary size is decided once, by the tokenizer; drop it and set "
                          "[data] vocab_size to the tokenizer's size (ignored for tokenizer = \"byte\")")
    preset = model.pop("preset", DEFAULT_SPEC_PRESET)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}{did_you_mean(str(preset), list(PRESETS))}; "
                          f"use one of {', '.join(PRESETS)}")
    train = _keys("train", raw.get("train", {}), TRAIN_KEYS + FAMILIES)
    family_train: dict[str, dict[str, Any]] = {}
    for fam in FAMILIES:
        if fam not in train:
            continue
        sub = train.pop(fam)
        if not isinstance(sub, dict):
            raise ConfigError(f"train.{fam}: must be a table; write it as a [train.{fam}] section")
        for k in sub:
            if k not in TRAIN_KEYS:
                raise ConfigError(unknown_key_line(f"train.{fam}", k, FAMILY_TRAIN_KEYS))
            if k not in FAMILY_TRAIN_KEYS:
                raise ConfigError(f"train.{fam}.{k}: not a per-family setting; a family's own table takes only "
                                  f"{', '.join(FAMILY_TRAIN_KEYS)}; set {k} in [train] (shared, so both families "
                                  "see the same data)")
        if "lr" in sub and sw.axis in ("params", "flops", "isoflop"):
            raise ConfigError(f"train.{fam}.lr: the {sw.axis} axis gives every level its own peak LR (axis.lrs or "
                              f"the size presets'); drop it, or run the {fam} family in its own sweep with its own "
                              "axis.lrs")
        family_train[fam] = sub
    data = _keys("data", raw.get("data", {}), DATA_KEYS)
    modality, recipe = check_modality(sw, model, data)
    micro_auto = train.get("micro_batch_size") == "auto"
    if micro_auto:  # resolved per run by the memory plan (cli/sweep.py); the runs are expanded with the whole batch
        del train["micro_batch_size"]
    source = data.get("source")
    if isinstance(source, str) and source.startswith(LOCAL_SOURCE_PREFIXES):
        data["source"] = absolute_source(source)
    resources = _given(ResourcesTable, raw.get("resources", {}))
    cost = _given(CostTable, raw.get("cost", {}))
    tracking = _given(TrackingTable, raw.get("tracking", {}))
    ax = AXIS_TABLES[sw.axis](**raw["axis"])
    # every family's grid (--families may add one the spec's [sweep] leaves out)
    tune = check_tune(raw.get("tune", {}), sw.axis, list(ax.values), bool(getattr(ax, "lrs", None)), list(FAMILIES))
    return SweepSpec(
        name=(sw.name if sw.name is not None else sw.axis).strip(), axis=sw.axis, families=tuple(sw.families),
        seeds=tuple(sw.seeds), recipe=recipe, modality=modality, values=tuple(ax.values), preset=preset,
        model=model, train=train,
        family_train=family_train, data=data, resources=resources, cost=cost, tracking=tracking, tune=tune,
        micro_batch_auto=micro_auto, mode=getattr(ax, "mode", None), total_tokens=getattr(ax, "total_tokens", None),
        head_size=getattr(ax, "head_size", None),
        batch_sizes=tuple(ax.batch_sizes) if getattr(ax, "batch_sizes", None) else None,
        lrs=tuple(ax.lrs) if getattr(ax, "lrs", None) else None,
        convention=getattr(ax, "convention", "paper"), description=sw.description,
        budgets=tuple(float(b) for b in ax.budgets) if sw.axis == "isoflop" else None,
        isoflop={k: getattr(ax, k) for k in ("sizes_per_budget", "centre", "tokens_per_param", "lr_exponent",
                                             "tolerance")} if sw.axis == "isoflop" else {},
    )
