"""Transformer++ and the autoregressive EBT.

``build_model`` and the model classes are imported lazily so that ``ebt_scaling.models.flops`` (pure
Python, used by sweep planning and the CLI) never pulls in torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_model", "TransformerPP", "EBT"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from ebt_scaling.models.build import build_model

        return build_model
    if name == "TransformerPP":
        from ebt_scaling.models.transformer_pp import TransformerPP

        return TransformerPP
    if name == "EBT":
        from ebt_scaling.models.ebt import EBT

        return EBT
    raise AttributeError(name)
