from __future__ import annotations

import pytest

from ebt_scaling.config import (
    RECIPE_OVERRIDES,
    SHARED_MODEL_FIELDS,
    DataConfig,
    ModelConfig,
    RunSpec,
    TrainConfig,
    get_preset,
    model_config,
    tokenizer_vocab_size,
)
from ebt_scaling.errors import ConfigError
from ebt_scaling.security import mask_url, scrub


def _m(**kw):
    base = dict(family="ebt", n_layer=2, n_embd=64, n_head=4, vocab_size=256, sequence_len=32)
    base.update(kw)
    return ModelConfig(**base)


def test_defaults_are_the_s1_recipe():
    m = _m()
    for k, v in RECIPE_OVERRIDES["ebt_s1"].items():
        assert getattr(m, k) == v, k
    assert m.ffn_dim == 64 and m.head_dim == 16


def test_s2_recipe_values():
    m = model_config("ebt", "tiny", vocab_size=512, sequence_len=64, recipe="ebt_s2")
    assert (m.mcmc_num_steps, m.step_size, m.langevin_noise_std) == (1, 5.0, 3.0)
    assert m.truncate_steps and not m.detach_between_steps and m.replay_buffer_size == 192
    assert m.train_steps_max == 3 and m.eval_steps == 3


@pytest.mark.parametrize("kw, needle", [
    (dict(n_embd=65), "n_embd: 65 is not divisible by n_head=4"),
    (dict(family="gpt"), "ModelConfig.family: unknown family 'gpt'"),
    (dict(n_layer=0), "ModelConfig.n_layer: must be a positive integer"),
    (dict(n_embd=12, n_head=4), "ModelConfig.n_head: head size 3 is odd"),
    (dict(step_size=-1.0), "ModelConfig.step_size: must be > 0"),
    (dict(descent_wrt="energy"), "ModelConfig.descent_wrt"),
    (dict(step_conditioning="prediction"), "ModelConfig.step_conditioning: unknown value 'prediction'; use 'all' "
                                          "(the default) or drop the key ('prediction' was removed"),
    (dict(step_conditioning="tokens"), "ModelConfig.step_conditioning: unknown value 'tokens'"),
    (dict(step_size_lr_floor="official"), "ModelConfig.step_size_lr_floor: unknown value 'official'"),
])
def test_model_validation_names_field_and_fix(kw, needle):
    with pytest.raises(ConfigError) as e:
        _m(**kw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and ";" in msg


def test_unknown_preset_and_recipe():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        model_config("ebt", "huge", vocab_size=10, sequence_len=8)
    with pytest.raises(ConfigError, match="unknown recipe 'ebt_s3'"):
        model_config("ebt", "tiny", vocab_size=10, sequence_len=8, recipe="ebt_s3")


def test_train_and_data_validation():
    with pytest.raises(ConfigError, match="TrainConfig.steps"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="DataConfig.source"):
        DataConfig(source="ftp://x")


def test_hash_is_stable_and_ignores_bookkeeping():
    spec = RunSpec(model=_m(), train=TrainConfig(seed=1))
    same = RunSpec(model=_m(), train=TrainConfig(seed=1, device="cpu", threads=2), sweep="s", axis="depth",
                   x=2.0)
    other = RunSpec(model=_m(), train=TrainConfig(seed=2))
    assert spec.config_hash == same.config_hash
    assert spec.config_hash != other.config_hash
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert len(spec.config_hash) == 64


# The EBT golden spec (tests/test_train_golden.py) hashed before ModelConfig.step_size_lr_floor existed, when the
# alpha group's LR floor was always the scaled one (its golden file of commit 06d15b1).
PRE_FLOOR_GOLDEN_EBT_HASH = "0a249507e60409e0b198e0ed316d4e92a25a1c9365b98b67bc8eb60ada539e5f"


def _golden_ebt(**model_kw):
    m = model_config("ebt", "nano", vocab_size=32, sequence_len=32, recipe="ebt_s1", **model_kw)
    t = TrainConfig(steps=20, batch_size=4, lr=3e-3, warmup_steps=4, eval_interval=20, eval_batches=2,
                    log_interval=1, seed=0, threads=1)
    return RunSpec(model=m, train=t, data=DataConfig(source="synthetic", vocab_size=32), recipe="ebt_s1")


def test_step_size_lr_floor_defaults_to_the_official_shared_floor_in_both_recipes():
    assert _m().step_size_lr_floor == "shared"
    for recipe in ("ebt_s1", "ebt_s2"):
        assert RECIPE_OVERRIDES[recipe]["step_size_lr_floor"] == "shared"


def test_step_size_lr_floor_is_hashed_only_where_it_changes_training():
    shared, scaled = _golden_ebt(step_size_lr_floor="shared"), _golden_ebt(step_size_lr_floor="scaled")
    # a learnable alpha with a multiplier: the two floors train differently, so they are different runs ...
    assert shared.config_hash != scaled.config_hash
    # ... and "scaled" (what every run before the setting trained with) keeps the hash it had then
    assert scaled.config_hash == PRE_FLOOR_GOLDEN_EBT_HASH
    assert "step_size_lr_floor" not in scaled.identity()["model"]
    assert shared.identity()["model"]["step_size_lr_floor"] == "shared"
    # where the setting changes nothing (T++, a fixed alpha as in S2, multiplier 1) it is not hashed
    for kw in (dict(family="transformer_pp"), dict(step_size_learnable=False), dict(step_size_lr_multiplier=1.0)):
        a, b = (RunSpec(model=_m(**kw, step_size_lr_floor=f), train=TrainConfig()) for f in ("shared", "scaled"))
        assert a.config_hash == b.config_hash, kw
        assert "step_size_lr_floor" not in a.identity()["model"]


def test_a_stored_config_without_step_size_lr_floor_reads_back_as_scaled():
    """Configs stored before the setting existed (database rows, checkpoints' spec.json) were trained with the
    scaled floor: they read back as such and keep their stored hash."""
    old = _golden_ebt(step_size_lr_floor="scaled").to_dict()
    del old["model"]["step_size_lr_floor"]
    back = RunSpec.from_dict(old)
    assert back.model.step_size_lr_floor == "scaled"
    assert back.config_hash == PRE_FLOOR_GOLDEN_EBT_HASH
    new = _golden_ebt()
    assert RunSpec.from_dict(new.to_dict()) == new  # a new config round-trips with its own setting


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match=r"^ModelConfig.n_layers: unknown key \(did you mean 'n_layer'\?\); "
                                          r"valid keys are family, n_layer, "):
        ModelConfig.from_dict({**_m().to_dict(), "n_layers": 3})


def test_mask_url():
    assert mask_url("postgresql+psycopg://bob:s3cret@db:5432/x") == "postgresql+psycopg://bob:***@db:5432/x"
    assert "s3cret" not in scrub("failed: connect postgresql://u:s3cret@h/db (password=s3cret)")
    assert mask_url("sqlite:///ebt_scale.db") == "sqlite:///ebt_scale.db"


def test_stored_configs_with_the_default_step_conditioning_still_load_and_hash_alike():
    """``step_conditioning`` stays a field (only "all" is accepted) so stored configs and their hashes read as
    before."""
    m = _m()
    d = m.to_dict()
    assert d["step_conditioning"] == "all"
    assert type(m).from_dict(d) == m


@pytest.mark.parametrize("cls,kw,msg", [
    ("model", dict(n_layer=10**12), "ModelConfig.n_layer: 1000000000000 is above the limit 1,024"),
    ("model", dict(n_embd=2**40, n_head=2**10), "ModelConfig.n_embd: 1099511627776 is above the limit"),
    ("model", dict(step_size="5"), "ModelConfig.step_size: must be a number, got '5' (a string); write it without "
                                   "quotes"),
    ("model", dict(n_head="32"), "ModelConfig.n_head: must be an integer, got '32' (a string); write it without "
                                 "quotes"),
    ("model", dict(step_size_learnable="no"), "ModelConfig.step_size_learnable: must be true or false, got 'no'"),
    ("model", dict(norm_eps=float("nan")), "ModelConfig.norm_eps: must be finite"),
    ("train", dict(lr=float("inf")), "TrainConfig.lr: must be finite, got inf"),
    ("train", dict(seed=10**17), "TrainConfig.seed: 100000000000000000 is above the limit 2,147,483,647"),
    ("train", dict(steps=2.0), "TrainConfig.steps: must be an integer, got 2.0"),
    ("train", dict(compile="no"), "TrainConfig.compile: must be true or false, got 'no'"),
    ("data", dict(vocab_size=True), "DataConfig.vocab_size: must be an integer, got True"),
])
def test_types_and_limits_are_checked_at_the_door(cls, kw, msg):
    from ebt_scaling.config import DataConfig, ModelConfig, TrainConfig

    build = {"model": lambda: ModelConfig(**{**dict(family="ebt", n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                                    sequence_len=16), **kw}),
             "train": lambda: TrainConfig(**kw), "data": lambda: DataConfig(**kw)}[cls]
    with pytest.raises(ConfigError) as e:
        build()
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("edit,msg", [
    ((r"values = \[1, 2, 3, 4\]", "values = [1, 2, 3, 4000000000000]"), "model.n_layer: 4000000000000 is above"),
    ((r"\nlr = [0-9.e-]+", "\nlr = inf"), "train.lr: must be finite"),
    ((r"seeds = \[0, 1\]", "seeds = [100000000000000000]"), "sweep.seeds[0]: 100000000000000000 is above the limit"),
    (("cpus_per_trial = 1", "cpus_per_trial = 1\nmax_retries = 1000000000000"), "resources.max_retries"),
    (("name = \"depth-tiny\"", "name = \"caf\xe9\""), "not UTF-8"),
])
def test_spec_limits_fail_in_one_line_before_anything_is_written(tmp_path, edit, msg):
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    import re

    text = (root / "experiments" / "tiny" / "depth.toml").read_text()
    data = re.sub(edit[0], edit[1], text, count=1)  # the edits are regular expressions
    assert data != text, edit
    spec = tmp_path / "s.toml"
    spec.write_bytes(data.encode("latin-1") if "not UTF-8" in msg else data.encode())
    db = tmp_path / "r.db"
    r = subprocess.run([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(spec), "--dry-run", "--db",
                        f"sqlite:///{db}"], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert str(spec) in r.stderr and not db.exists()


# A Transformer++ spec hashed before hash version 2 (commit 88d02bf), when every EBT field was in its identity.
PRE_V2_GOLDEN_TPP_HASH = "00f9a626436aee64b7030a3fb185d8bf64ddd4983961e961c38301b53c9b50dd"


def _golden_tpp(**model_kw):
    m = model_config("transformer_pp", "nano", vocab_size=32, sequence_len=32, **model_kw)
    t = TrainConfig(steps=20, batch_size=4, lr=3e-3, warmup_steps=4, eval_interval=20, eval_batches=2,
                    log_interval=1, seed=0, threads=1)
    return RunSpec(model=m, train=t, data=DataConfig(source="synthetic", vocab_size=32))


def test_ebt_only_fields_are_out_of_a_transformer_pp_hash_and_old_hashes_stay_readable():
    new = _golden_tpp()
    assert new.hash_version == 2
    # EBT options change nothing for a T++: not hashed ...
    assert _golden_tpp(step_size=7.0, mcmc_num_steps=5).config_hash == new.config_hash
    assert set(new.identity()["model"]) <= set(SHARED_MODEL_FIELDS)
    # ... while the shape still is
    assert _golden_tpp(norm_eps=1e-6).config_hash != new.config_hash
    # a config stored before the field existed reads back as version 1, with the hash it was stored under
    old = new.to_dict()
    del old["hash_version"]
    back = RunSpec.from_dict(old)
    assert back.hash_version == 1 and back.config_hash == PRE_V2_GOLDEN_TPP_HASH
    assert RunSpec.from_dict(new.to_dict()) == new
    # an EBT run's identity is the same under both versions (its hashes did not move)
    ebt = _golden_ebt(step_size_lr_floor="scaled")
    assert ebt.with_(hash_version=1).config_hash == ebt.config_hash == PRE_FLOOR_GOLDEN_EBT_HASH
    for bad in (3, 0, True):
        with pytest.raises(ConfigError, match="RunSpec.hash_version"):
            new.with_(hash_version=bad)


def test_presets_are_the_one_source_of_run_defaults():
    """`ebt-scale train --preset P` and a spec naming P take every unset setting from config.PRESETS."""
    from ebt_scaling.sweeps import expand, parse_spec

    for name in ("nano", "tiny", "xxs"):
        p = get_preset(name)
        raw = {"sweep": {"axis": "depth", "families": ["ebt", "transformer_pp"]},
               "model": {"preset": name}, "data": {"source": "synthetic"}, "axis": {"values": [1]}}
        runs = expand(parse_spec(raw))
        assert len(runs) == 2
        for r in runs:
            t = r.spec.train
            assert (t.steps, t.batch_size, t.lr, t.warmup_steps, t.eval_interval) == (
                p.steps, p.batch_size, p.peak_lr, p.warmup_steps, p.eval_interval)  # one setting for both families
            assert r.spec.model.sequence_len == p.sequence_len
            assert r.spec.model.vocab_size == r.spec.data.vocab_size == p.vocab_size
        ebt = next(r.spec.model for r in runs if r.spec.family == "ebt")
        assert all(getattr(ebt, k) == v for k, v in p.ebt_options("ebt_s1").items())
    assert get_preset("tiny").ebt_options("ebt_s1") and not get_preset("xxs").ebt_options("ebt_s1")
    assert get_preset("tiny").ebt_options("ebt_s2") == {}


def test_vocab_size_is_decided_once_by_the_tokenizer():
    from ebt_scaling.errors import SpecError
    from ebt_scaling.sweeps import expand, parse_spec

    assert tokenizer_vocab_size(DataConfig(tokenizer="byte", vocab_size=2048)) == 256
    assert tokenizer_vocab_size(DataConfig(tokenizer="bpe", vocab_size=777)) == 777
    raw = {"sweep": {"axis": "depth"}, "model": {"preset": "nano"},
           "data": {"tokenizer": "byte"}, "axis": {"values": [1]}}
    assert {r.spec.model.vocab_size for r in expand(parse_spec(raw))} == {256}
    raw["model"]["vocab_size"] = 300
    with pytest.raises(SpecError, match=r"model.vocab_size: .*decided once.*set \[data\] vocab_size") as e:
        parse_spec(raw, source="s.toml")
    assert "\n" not in str(e.value)


# Hashes computed on main d86f286, before the configs became pydantic models (issue 26.4): every one of these
# configurations must keep its identity (stored runs, checkpoints and sweeps find their runs by it).
PINNED_HASHES = {
    "tpp_nano": "3e32ed01a54ebc7a0077f183be946d9c4349154c4f05354861c45a1b0fb39dcb",
    "tpp_nano_v1": "00f9a626436aee64b7030a3fb185d8bf64ddd4983961e961c38301b53c9b50dd",
    "ebt_s1_shared": "584b81e05c295d93b9f9cd11925cde1dad21f8f8feba947166d91d7c6de4caba",
    "ebt_s1_scaled": "0a249507e60409e0b198e0ed316d4e92a25a1c9365b98b67bc8eb60ada539e5f",
    "ebt_s2_store_doc": "0b2583aa67cdd9fa9eff1840034b7871ee1e64e184afdde15ed55e9f29322bce",
    "ints_in_float_fields": "9fee37bf7a262435909651c631ce6b21aa005c66f10b48ecce52167ce1355b17",
    "tpp_explicit": "96e57aa70bb63684f63d4fe50911d50928156793e015f8252a87f83b015c471d",
}


def _pinned_specs():
    t = dict(steps=20, batch_size=4, lr=3e-3, warmup_steps=4, eval_interval=20, eval_batches=2, log_interval=1,
             seed=0, threads=1)
    syn = DataConfig(source="synthetic", vocab_size=32)
    tpp = model_config("transformer_pp", "nano", vocab_size=32, sequence_len=32)
    ebt = model_config("ebt", "nano", vocab_size=32, sequence_len=32, recipe="ebt_s1")
    yield "tpp_nano", RunSpec(model=tpp, train=TrainConfig(**t), data=syn)
    yield "tpp_nano_v1", RunSpec(model=tpp, train=TrainConfig(**t), data=syn, hash_version=1)
    yield "ebt_s1_shared", RunSpec(model=ebt, train=TrainConfig(**t), data=syn, recipe="ebt_s1")
    yield "ebt_s1_scaled", RunSpec(model=model_config("ebt", "nano", vocab_size=32, sequence_len=32, recipe="ebt_s1",
                                                      step_size_lr_floor="scaled"),
                                   train=TrainConfig(**t), data=syn, recipe="ebt_s1")
    yield "ebt_s2_store_doc", RunSpec(
        model=model_config("ebt", "tiny", vocab_size=512, sequence_len=64, recipe="ebt_s2"),
        train=TrainConfig(steps=300, batch_size=16, lr=3e-3, warmup_steps=30, eval_interval=100, eval_tokens=4096,
                          schedule_steps=600, precision="bf16", seed=33),
        data=DataConfig(source="store:/data/st", tokenizer="byte", vocab_size=256, sampling="document"),
        recipe="ebt_s2")
    # integers in number fields (a TOML spec's `lr = 1`) hash as written, as they always did
    yield "ints_in_float_fields", RunSpec(
        model=ModelConfig(family="ebt", n_layer=2, n_embd=64, n_head=4, vocab_size=256, sequence_len=32,
                          step_size=1, step_size_lr_multiplier=3, rope_theta=10000, norm_eps=1e-5, ffn_hidden=128),
        train=TrainConfig(steps=200, batch_size=8, warmup_steps=20, eval_interval=50, lr=1, min_lr_div=10,
                          grad_clip=1, weight_decay=0, beta1=0.9, divergence_factor=3),
        data=DataConfig(source="text:/tmp/corpus.txt", tokenizer="hf:gpt2", vocab_size=50257, val_fraction=0.1))
    yield "tpp_explicit", RunSpec(
        model=ModelConfig(family="transformer_pp", n_layer=4, n_embd=256, n_head=4, vocab_size=2048,
                          sequence_len=256),
        train=TrainConfig(steps=200, batch_size=8, lr=2.4e-3, warmup_steps=20, eval_interval=50),
        data=DataConfig(source="shakespeare"))


def test_run_hashes_are_those_of_the_stdlib_configs():
    got = {name: spec.config_hash for name, spec in _pinned_specs()}
    assert got == PINNED_HASHES
    for name, spec in _pinned_specs():  # and a stored config reads back to the same identity
        assert RunSpec.from_dict(spec.to_dict()).config_hash == PINNED_HASHES[name], name
    # a number is kept as written: 1 and 1.0 stay distinct identities, as they were
    assert TrainConfig(lr=1).lr == 1 and isinstance(TrainConfig(lr=1).lr, int)
    m = _m()
    one, one_f = (RunSpec(model=m, train=TrainConfig(lr=v)).config_hash for v in (1, 1.0))
    assert one != one_f


def test_one_source_per_default():
    """EBT defaults are the ebt_s1 recipe's, TrainConfig's sizes and steps the default preset's."""
    from dataclasses import fields

    from ebt_scaling.config import DEFAULT_PRESET, PRESETS

    m = _m()
    assert {k: getattr(m, k) for k in RECIPE_OVERRIDES["ebt_s1"]} == RECIPE_OVERRIDES["ebt_s1"]
    p, t = PRESETS[DEFAULT_PRESET], TrainConfig()
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps, t.eval_interval) == (
        p.steps, p.batch_size, p.peak_lr, p.warmup_steps, p.eval_interval)
    for cls in (ModelConfig, TrainConfig, DataConfig, RunSpec):  # every field has its help
        assert all(cls.__pydantic_fields__[f.name].description for f in fields(cls)), cls


def test_cli_train_takes_unset_settings_from_the_config():
    """`ebt-scale train` does not re-declare TrainConfig's defaults (log_interval, eval_batches)."""
    import inspect

    from ebt_scaling.cli.train import train_cmd

    params = inspect.signature(train_cmd).parameters
    assert params["log_interval"].default is None and params["eval_batches"].default is None
