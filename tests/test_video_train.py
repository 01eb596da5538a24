"""The video training path (issue 31 item 1): config identity, the frame-batch provider, train() and the CLI."""

from __future__ import annotations

import pytest

from ebt_scaling.config import SHARED_MODEL_FIELDS, DataConfig, ModelConfig, RunSpec, TrainConfig
from ebt_scaling.errors import ConfigError


def _vm(family: str = "transformer_pp", frame_dim: int | None = 8, **kw) -> ModelConfig:
    base = dict(family=family, n_layer=1, n_embd=16, n_head=2, vocab_size=2, sequence_len=4, frame_dim=frame_dim)
    return ModelConfig(**{**base, **kw})


def test_frame_dim_is_hashed_only_when_set():
    """A text model's identity has no frame_dim (tests/test_config.py pins those hashes); a video model's does, so
    two frame sizes are two runs, and the modality follows the field."""
    t = TrainConfig(steps=2)
    for fam in ("transformer_pp", "ebt"):
        text = RunSpec(model=_vm(fam, None), train=t)
        assert "frame_dim" not in text.identity()["model"] and text.model.modality == "text"
        v8, v16 = (RunSpec(model=_vm(fam, e), train=t) for e in (8, 16))
        assert v8.identity()["model"]["frame_dim"] == 8 and v8.model.modality == "video"
        assert len({text.config_hash, v8.config_hash, v16.config_hash}) == 3
        assert RunSpec.from_dict(v8.to_dict()).config_hash == v8.config_hash
        old = text.to_dict()  # a config stored before the field existed reads back as a text model, same hash
        del old["model"]["frame_dim"]
        assert RunSpec.from_dict(old).config_hash == text.config_hash
    assert "frame_dim" in SHARED_MODEL_FIELDS  # both families use it: a T++ video run hashes it too
    with pytest.raises(ConfigError, match="frame_dim"):
        _vm(frame_dim=0)


def test_build_model_dispatches_on_frame_dim():
    from ebt_scaling.models import build_model
    from ebt_scaling.models.video import VideoEBT, VideoTransformerPP

    assert type(build_model(_vm("transformer_pp"))) is VideoTransformerPP
    m = build_model(_vm("ebt", 12))
    assert type(m) is VideoEBT and m.frame_dim == 12
    assert type(build_model(_vm("ebt", None))).__name__ == "EBT"


def test_synthetic_video_source_names():
    assert DataConfig(source="synthetic-video").source == "synthetic-video"
    assert DataConfig(source="synthetic-video:64").source == "synthetic-video:64"
    for bad in ("synthetic-video:", "synthetic-video:x", "synthetic-video:1"):
        with pytest.raises(ConfigError, match="DataConfig.source: .*clip count.*synthetic-video:N"):
            DataConfig(source=bad)
    with pytest.raises(ConfigError, match="DataConfig.sampling: the synthetic-video source has no documents"):
        DataConfig(source="synthetic-video", sampling="document")
