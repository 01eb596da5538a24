"""Expand a SweepSpec into RunSpecs (one per axis value x family x seed) and PlannedRuns for the store.

Axis semantics (``docs/sweeps.md``):

* ``data``   x = training tokens. ``separate``: one run per budget, steps = tokens / (batch x context), so
  warm-up + cosine is matched to each budget. ``evaluations``: one run per family/seed with the largest
  budget, validated every smallest-budget steps (the paper's Fig. 4a); its points are the ``val_loss``
  series at the budget steps (listed in the run config under ``eval_tokens``).
* ``batch``  x = tokens per batch (batch x context); fixed steps (paper) or fixed tokens.
* ``depth``  x = blocks at the base width; ``width`` x = embedding size at the base depth, fixed head size.
* ``params`` x = non-embedding parameters of the size presets (their batch sizes and peak LRs) or of custom
  shapes.
* ``flops``  the same runs as ``params`` (same config hashes), x = training FLOPs in the named convention.

Video (issue 31; ``[model] frame_dim`` set, ``SweepSpec.modality == "video"``): the same axes but isoflop, over
frames instead of tokens (a run's ``tokens`` are its predicted frames, batch x context frames per step; the data
axis's budgets are frames), the model's ``vocab_size`` is ``VIDEO_VOCAB_SIZE`` (ignored by the video models), the
EBT takes a video recipe (``config.VIDEO_RECIPE_OVERRIDES``; on the CPU presets with ``config.CPU_VIDEO_EBT_S1``'s
step size, as ``ebt-scale train``), and parameters and FLOPs come from ``models/video_flops.py``
(``video_param_counts``, ``video_flops_per_frame``: x of the params axis = non-embedding parameters, of the flops
axis = FLOPs per frame x frames). The video recipe is the sweep's (``SweepSpec.recipe``), recorded in each EBT RunSpec
(``RunSpec.recipe``, not hashed) as a text recipe is.

A ``store:DIR`` source is named by content too: each run's ``DataConfig.store_fingerprint`` is the store's
fingerprint (``config.store_fingerprint``, the shards' checksums) read from its manifest where the sweep is planned,
so re-preparing another corpus into the same folder gives new runs (``store_changes`` says so in one line) and a
trial refuses a store that changed after planning.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from ebt_scaling.config import (
    CPU_VIDEO_EBT_S1,
    RECIPE_OVERRIDES,
    SHARED_MODEL_FIELDS,
    STORE_PREFIX,
    VIDEO_RECIPE_OVERRIDES,
    DataConfig,
    ModelConfig,
    RunSpec,
    TrainConfig,
    get_preset,
    store_fingerprint,
    tokenizer_vocab_size,
)
from ebt_scaling.errors import ConfigError, SpecError
from ebt_scaling.records import PlannedRun
from ebt_scaling.sweeps.isoflop import budget_label, plan_isoflop
from ebt_scaling.sweeps.tables import TUNE_GRID_KEYS, SweepSpec, read_manifest

FAMILY_ORDER = {"transformer_pp": 0, "ebt": 1}
# A video model has no vocabulary; ModelConfig requires one, the video models ignore it (as `ebt-scale train`).
VIDEO_VOCAB_SIZE = 2


def recipe_overrides(recipe: str) -> dict[str, Any]:
    """The ModelConfig overrides of a text or video EBT recipe."""
    return RECIPE_OVERRIDES[recipe] if recipe in RECIPE_OVERRIDES else VIDEO_RECIPE_OVERRIDES[recipe]


def unit(spec: SweepSpec) -> str:
    """What a run's ``tokens`` count: "frames" for a video sweep, else "tokens"."""
    return "frames" if spec.modality == "video" else "tokens"


@dataclass(frozen=True)
class ExpandedRun:
    """One planned run: the RunSpec to train and the PlannedRun to store."""

    spec: RunSpec
    planned: PlannedRun
    label: str  # the axis value as written in the spec (e.g. "xxs" or "8")

    @property
    def config_hash(self) -> str:
        return self.planned.config_hash


def _section_error(spec: SweepSpec, exc: ConfigError) -> SpecError:
    msg = str(exc)
    for cls, sec in (("ModelConfig.", "model."), ("TrainConfig.", "train."), ("DataConfig.", "data.")):
        if msg.startswith(cls):
            msg = sec + msg[len(cls):]
            break
    return SpecError(f"{spec.source}: {msg}")


def accounting(cfg: ModelConfig) -> tuple[dict[str, int], dict[str, float]]:
    """Parameter groups and training FLOPs per token (per frame for a video model) under both conventions (pure
    Python)."""
    if cfg.frame_dim is not None:
        from ebt_scaling.models.video_flops import video_flops_per_frame, video_param_counts

        params = {k: int(v) for k, v in video_param_counts(cfg, cfg.frame_dim).items()}
        fpt = {c: float(video_flops_per_frame(cfg, cfg.frame_dim, c, mode="train")) for c in ("paper", "exact")}
        return params, fpt
    from ebt_scaling.models.flops import flops_per_token, param_counts

    params = {k: int(v) for k, v in param_counts(cfg).items()}
    fpt = {c: float(flops_per_token(cfg, c, mode="train")) for c in ("paper", "exact")}
    return params, fpt


def expand(spec: SweepSpec) -> list[ExpandedRun]:
    """All runs of the sweep, ordered by axis value, then family, then seed."""
    try:
        return _expand(spec)
    except SpecError:
        raise
    except ConfigError as exc:
        raise _section_error(spec, exc) from None


def _base(spec: SweepSpec) -> tuple[DataConfig, dict[str, Any], dict[str, Any], dict[str, Any], int]:
    """The data, base shape, EBT options, base train settings and context length every run starts from."""
    preset = get_preset(spec.preset)
    data = DataConfig(**{"vocab_size": store_vocab_size(spec.data, preset.vocab_size), **spec.data})
    if (fp := read_store_fingerprint(data.source)) is not None:
        data = dataclasses.replace(data, store_fingerprint=fp)
    video = spec.modality == "video"
    shape: dict[str, Any] = dict(n_layer=preset.n_layer, n_embd=preset.n_embd, n_head=preset.n_head,
                                 sequence_len=preset.sequence_len,
                                 vocab_size=VIDEO_VOCAB_SIZE if video else tokenizer_vocab_size(data))
    shape.update({k: v for k, v in spec.model.items() if k in SHARED_MODEL_FIELDS})
    # the size's own EBT options: the CPU presets' tuned S1 step size (text), or their video alpha (video S1)
    sized = (dict(CPU_VIDEO_EBT_S1) if preset.cpu and spec.recipe == "ebt_vid_s1" else {}) if video \
        else preset.ebt_options(spec.recipe)
    ebt_options = {**sized, **{k: v for k, v in spec.model.items() if k not in SHARED_MODEL_FIELDS}}
    train_base: dict[str, Any] = preset.train_defaults()
    train_base.update(spec.train)
    seq = int(shape["sequence_len"])
    return data, shape, ebt_options, train_base, seq


def _model_of(spec: SweepSpec, shape: dict[str, Any], ebt_options: dict[str, Any]
              ) -> Callable[[str, dict[str, Any]], ModelConfig]:
    def model_of(family: str, shape_over: dict[str, Any]) -> ModelConfig:
        mkw: dict[str, Any] = {"family": family, **shape, **shape_over}
        if family == "ebt":
            mkw.update(recipe_overrides(spec.recipe))
            mkw.update(ebt_options)
        return ModelConfig(**mkw)

    return model_of


def isoflop_plan(spec: SweepSpec) -> Any:
    """An isoflop sweep's plan (``sweeps/isoflop.py``: the points and the notes on dropped shapes and windows)."""
    try:
        data, shape, ebt_options, train_base, seq = _base(spec)
        return plan_isoflop(spec, _model_of(spec, shape, ebt_options), train_base, seq)
    except SpecError:
        raise
    except ConfigError as exc:
        raise _section_error(spec, exc) from None


def _expand(spec: SweepSpec) -> list[ExpandedRun]:
    # Every setting the spec leaves unset comes from its preset (config.PRESETS), for both families alike.
    data, shape, ebt_options, train_base, seq = _base(spec)

    # (label, shape overrides, train overrides, eval_tokens) per axis value.
    points: list[tuple[str, dict[str, Any], dict[str, Any], list[int] | None]] = []
    # (family, point, budget): the isoflop axis plans each family's own points; the others share them
    fam_points: list[tuple[str, tuple[str, dict[str, Any], dict[str, Any], list[int] | None], float | None]]
    ax = spec.axis
    if ax == "depth":
        points = [(str(v), {"n_layer": v}, {}, None) for v in spec.values]
    elif ax == "width":
        assert spec.head_size is not None
        points = [(str(v), {"n_embd": v, "n_head": v // spec.head_size}, {}, None) for v in spec.values]
    elif ax in ("params", "flops"):
        for i, v in enumerate(spec.values):
            if isinstance(v, dict):  # a custom shape: batch size and LR from [train] unless listed
                label = str(v.get("name") or f"L{v['n_layer']}D{v['n_embd']}")
                shp = {k: v[k] for k in ("n_layer", "n_embd", "n_head")}
                bs, lr = train_base["batch_size"], train_base["lr"]
            else:
                p = get_preset(v)
                label, shp = v, {"n_layer": p.n_layer, "n_embd": p.n_embd, "n_head": p.n_head}
                bs, lr = p.batch_size, p.peak_lr
            tr = {"batch_size": spec.batch_sizes[i] if spec.batch_sizes else bs,
                  "lr": spec.lrs[i] if spec.lrs else lr}
            points.append((label, shp, tr, None))
    elif ax == "batch":
        for v in spec.values:
            tr = {"batch_size": v}
            if spec.mode == "fixed_tokens":
                assert spec.total_tokens is not None
                steps = spec.total_tokens // (v * seq)
                if steps < 1:
                    raise SpecError(f"{spec.source}: axis.total_tokens: {spec.total_tokens} {unit(spec)} is less "
                                    f"than one batch of {v} x {seq}; raise total_tokens")
                tr["steps"] = steps
            points.append((str(v), {}, tr, None))
    elif ax == "data":
        per_step = int(train_base["batch_size"]) * seq
        budgets = sorted(spec.values)
        steps_of = {}
        for v in budgets:
            s = v // per_step
            if s < 1:
                raise SpecError(f"{spec.source}: axis.values: {v} {unit(spec)} is less than one batch "
                                f"({per_step} {unit(spec)}); use larger budgets or a smaller batch")
            steps_of[v] = s
        if spec.mode == "separate":
            points = [(str(v), {}, {"steps": steps_of[v]}, None) for v in spec.values]
        else:
            all_steps = [steps_of[v] for v in budgets]
            interval = math.gcd(*all_steps)
            points = [(str(budgets[-1]), {}, {"steps": all_steps[-1], "eval_interval": interval},
                       [s * per_step for s in all_steps])]
    elif ax == "isoflop":  # per (budget, family) its own window of shapes (sweeps/isoflop.py)
        plan = plan_isoflop(spec, _model_of(spec, shape, ebt_options), train_base, seq)
        fam_points = [(p.family, (f"{p.label}@{budget_label(p.budget)}", p.shape,
                                  {"steps": p.steps, "lr": p.lr, "warmup_steps": p.warmup_steps,
                                   "batch_size": p.batch_size}, None), p.budget) for p in plan.points]
    else:  # pragma: no cover - validated in parse_spec
        raise SpecError(f"{spec.source}: sweep.axis: unknown axis {ax!r}")
    if ax != "isoflop":
        fam_points = [(family, p, None) for p in points
                      for family in sorted(spec.families, key=FAMILY_ORDER.__getitem__)]

    out: list[ExpandedRun] = []
    for family, (label, shape_over, train_over, eval_tokens), budget in fam_points:
        for point in grid_points(spec.tune.get(family, {})):
            for seed in spec.seeds:
                run = _run(spec, family, seed, label, point, shape, shape_over, ebt_options, train_base,
                           train_over, eval_tokens, data, seq)
                if budget is not None:  # the budget it was planned for (not hashed: steps and shape are)
                    run.planned.config["isoflop"] = {"budget": budget, "convention": spec.convention}
                out.append(run)
    if "ebt" not in spec.families and ebt_options and out:  # EBT options a T++-only sweep ignores: checked still
        ModelConfig(**{**out[0].spec.model.to_dict(), "family": "ebt", **recipe_overrides(spec.recipe),
                       **ebt_options})
    hashes = [r.config_hash for r in out]
    if len(set(hashes)) != len(hashes):
        raise SpecError(f"{spec.source}: axis.values: two values give the same run configuration; "
                        "list values that change the run")
    return out


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of a family's ``[tune]`` grid, keys in ``TUNE_GRID_KEYS`` order (``[{}]``: no grid)."""
    keys = [k for k in TUNE_GRID_KEYS if k in grid]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def scaled_lr(base: Any, scale: Any) -> Any:
    """``base x scale`` (``lr_scale``): the base itself at scale 1 (its run is the untuned level's LR, hashed as
    written), else rounded to 12 significant digits (0.003 x 3 is 0.009, not 0.009000000000000001)."""
    if scale == 1:
        return base
    v = base * scale
    return float(f"{v:.12g}") if isinstance(v, float) else v


def _run(spec: SweepSpec, family: str, seed: int, label: str, point: dict[str, Any], shape: dict[str, Any],
         shape_over: dict[str, Any], ebt_options: dict[str, Any], train_base: dict[str, Any],
         train_over: dict[str, Any], eval_tokens: list[int] | None, data: DataConfig, seq: int) -> ExpandedRun:
    ax = spec.axis
    mkw: dict[str, Any] = {"family": family, **shape, **shape_over}
    recipe: Any = None
    if family == "ebt":
        recipe = spec.recipe
        mkw.update(recipe_overrides(spec.recipe))
        mkw.update(ebt_options)
    model = ModelConfig(**mkw)
    tkw = dict(train_base)
    tkw.update(train_over)
    own = spec.family_train.get(family, {})
    tkw.update(own)
    tkw["seed"] = seed
    tune: dict[str, Any] = {}
    tuned = "tune"  # where the point's keys were given: [tune] or [tune.<family>]
    if point:
        for k, v in point.items():
            if k == "lr_scale":
                tkw["lr"] = scaled_lr(tkw["lr"], v)
            else:
                tkw[k] = v
        tune = {**point, "lr": tkw["lr"]}
    try:
        train = TrainConfig(**tkw)
    except ConfigError as exc:
        for keys, where in ((point, tuned), (own, f"train.{family}")):
            if keys and str(exc).startswith(tuple(f"TrainConfig.{k}:" for k in keys)):
                raise SpecError(f"{spec.source}: {where}.{str(exc)[len('TrainConfig.'):]}") from None
        raise
    if spec.tune and train.select_tokens is None:
        # a [tune] sweep scores every run on a selection set as large as its evaluation set and disjoint from it
        # (data/sampler.py): the selection set picks the LR, the evaluation set gives the fitted loss
        train = dataclasses.replace(train, select_tokens=train.eval_tokens or train.eval_batches * train.batch_size
                                    * seq)
    if train.warmup_steps >= train.steps:
        warmup = (f"{tuned}.warmup_steps" if "warmup_steps" in point else
                  f"train.{family}.warmup_steps" if "warmup_steps" in own else "train.warmup_steps")
        key = "axis.values" if "steps" in train_over else warmup
        raise SpecError(f"{spec.source}: {key}: a run of {train.steps} steps is not longer than "
                        f"its warm-up ({train.warmup_steps} steps); lower {warmup} "
                        "or raise the steps/budget")
    run = RunSpec(model=model, train=train, data=data, sweep=spec.name, axis=ax, x=None,
                  recipe=recipe)
    params, fpt = accounting(model)
    tokens = run.tokens
    if ax in ("depth", "width", "batch"):
        x = float(model.n_layer if ax == "depth" else model.n_embd if ax == "width"
                  else train.batch_size * seq)
    elif ax == "data":
        x = float(tokens)
    elif ax == "params":
        x = float(params["non_embedding"])
    elif ax == "isoflop":  # the realised budget: the family's own F x the run's tokens
        x = float(fpt[spec.convention] * tokens)
    else:
        x = float(fpt[spec.convention] * tokens)
    run = dataclasses.replace(run, x=x)
    config = run.to_dict()
    if eval_tokens is not None:
        config["eval_tokens"] = eval_tokens
    if tune:  # the run's grid point (not hashed beyond the optimizer values themselves): the fit groups by it
        config["tune"] = tune
    planned = PlannedRun(family=family, axis=ax, x=x, seed=seed, config_hash=run.config_hash,
                         config=config, params=params, flops_per_token=fpt, tokens=tokens)
    return ExpandedRun(spec=run, planned=planned, label=label)


def store_vocab_size(data: dict[str, Any], default: int) -> int:
    """``DataConfig.vocab_size`` for a spec's ``[data]`` (or ``train``'s options): a readable token store's own
    vocabulary (its manifest's, the tokenizer it was encoded with) when none is given, else the given one, else
    ``default`` (the size preset's BPE). The model's vocabulary (``tokenizer_vocab_size``: 256 with ``byte``)
    smaller than the store's is refused in one line, at planning, instead of failing every trial."""
    manifest = read_manifest(str(data.get("source", "")))
    params = manifest.get("params") if manifest is not None and manifest.get("kind") != "video" else None
    vocab = params.get("vocab_size") if isinstance(params, dict) else None
    given = data.get("vocab_size")
    given = given if isinstance(given, int) and not isinstance(given, bool) else None
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 2:
        return given or default
    byte = data.get("tokenizer") == "byte"
    chosen = given or (default if byte else vocab)  # byte: the model has 256 whatever vocab_size says
    model = 256 if byte else chosen
    if model < vocab:
        what = "tokenizer = \"byte\" (256 ids)" if byte else f"vocab_size {model}"
        raise ConfigError(f"DataConfig.vocab_size: {what} is smaller than the vocabulary of {data['source']} ({vocab}, "
                          f"its tokenizer's); leave vocab_size (--vocab-size) and tokenizer unset, the store's is "
                          f"used, or set vocab_size to {vocab}")
    return chosen


def read_store_fingerprint(source: str) -> str | None:
    """The content fingerprint of a ``store:DIR`` source (token or video store) whose manifest is readable here
    (None for other sources, and for a store this machine cannot read: a cluster's path, checked on its nodes)."""
    manifest = read_manifest(source)
    return store_fingerprint(manifest) if manifest is not None else None


def store_changes(sweep: str, runs: list[ExpandedRun], stored: Callable[[], Iterable[dict[str, Any]]]) -> list[str]:
    """One line per token store whose content differs from what the run configs ``sweep`` already holds
    (``stored()``, read only when a run trains on a fingerprinted store) were planned on: those runs are not
    reused, the new fingerprint plans new runs."""
    now = {r.spec.data.source: r.spec.data.store_fingerprint for r in runs if r.spec.data.store_fingerprint}
    if not now:
        return []
    before: dict[str, set[str | None]] = {}
    for config in stored():
        data = config.get("data") or {}
        if data.get("source") in now:
            before.setdefault(data["source"], set()).add(data.get("store_fingerprint"))
    lines = []
    for source, fps in sorted(before.items()):
        old = sorted(fp[:12] if fp else "none recorded" for fp in fps if fp != now[source])
        if old:
            lines.append(f"sweep {sweep}: store {source[len(STORE_PREFIX):]} is not the one its earlier runs were "
                         f"planned on (fingerprint {', '.join(old)} != {now[source][:12]}); planning new runs on it "
                         "(the earlier runs are kept, not reused)")
    return lines


def keep_stored_hash_versions(runs: list[ExpandedRun],
                              stored: Callable[[list[str]], Collection[str]]) -> list[ExpandedRun]:
    """A run already stored under an older hash version keeps it: a Transformer++ run planned before
    ``HASH_VERSION`` 2 is found by its version-1 hash (``stored(hashes)`` returns those the database holds), and
    that identity is reused with its results and checkpoints instead of being planned and trained again."""
    old = {i: r.spec.with_(hash_version=1) for i, r in enumerate(runs)
           if r.spec.hash_version != 1 and r.spec.family != "ebt"}
    if not old:
        return runs
    known = set(stored([r.config_hash for r in runs] + [s.config_hash for s in old.values()]))
    out = list(runs)
    for i, spec in old.items():
        r = runs[i]
        if r.config_hash in known or spec.config_hash not in known:
            continue
        config = {**r.planned.config, "hash_version": 1}
        planned = dataclasses.replace(r.planned, config_hash=spec.config_hash, config=config)
        out[i] = ExpandedRun(spec=spec, planned=planned, label=r.label)
    return out


def with_micro_batch(run: ExpandedRun, micro_batch_size: int) -> ExpandedRun:
    """``run`` with its gradient accumulation set (``micro_batch_size`` changes rounding only: the config hash,
    hence the run's identity, stays the same)."""
    spec = run.spec.with_(train=dataclasses.replace(run.spec.train, micro_batch_size=micro_batch_size))
    config = {**run.planned.config, "train": {**run.planned.config["train"], "micro_batch_size": micro_batch_size}}
    return ExpandedRun(spec=spec, planned=dataclasses.replace(run.planned, config=config), label=run.label)
