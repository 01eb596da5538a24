"""``build_model(cfg)``: the one constructor other packages use."""

from __future__ import annotations

from torch import nn

from ebt_scaling.config import ModelConfig
from ebt_scaling.errors import ConfigError


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised ``TransformerPP`` or ``EBT`` for ``cfg`` (on CPU, fp32); with ``cfg.frame_dim`` set, the
    video model of the family (``VideoTransformerPP`` or ``VideoEBT``, models/video.py)."""
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"build_model: expected a ModelConfig, got {type(cfg).__name__}; "
                          "build one with ebt_scaling.config.ModelConfig(...) or model_config(...)")
    if cfg.frame_dim is not None:
        from ebt_scaling.models.video import build_video_model

        return build_video_model(cfg, cfg.frame_dim)
    if cfg.family == "transformer_pp":
        from ebt_scaling.models.transformer_pp import TransformerPP

        return TransformerPP(cfg)
    if cfg.family == "ebt":
        from ebt_scaling.models.ebt import EBT

        return EBT(cfg)
    raise ConfigError(f"family: unknown family {cfg.family!r}; use transformer_pp or ebt")
